import sys

from pyruntime.sidecar import main

sys.exit(main())
