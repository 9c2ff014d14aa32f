"""Keep coremltools from importing frameworks a step does not use.

At import time coremltools imports torch, scikit-learn, scipy and transformers only to
learn whether they are installed: about 10 s of every job on a 2-core machine, more than
a small conversion itself. A step marks the ones it does not use as absent first; if one
is then needed after all, Python raises ImportError naming it, rather than a wrong result.
"""

import sys


def skip_unused_frameworks(*names: str) -> None:
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = None
