from sd3coreml.cli import main

raise SystemExit(main())
