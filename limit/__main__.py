import sys

from limit.cli import main

sys.exit(main())
