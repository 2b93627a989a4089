import sys

from asrl.cli import main

sys.exit(main())
