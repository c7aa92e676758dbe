import sys

from pdlb_ratio.cli import main

sys.exit(main())
