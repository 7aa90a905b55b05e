"""`python3 -m flexnnd ...` is `flexnnd ...`: e.g. `sudo python3 -m flexnnd install` from a source tree."""

import sys

from flexnnd.main import main

sys.exit(main())
