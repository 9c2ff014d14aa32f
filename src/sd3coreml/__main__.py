from sd3coreml.commands.main import main

raise SystemExit(main())
