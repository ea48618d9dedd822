import sys

from http_bridge.cli import main

sys.exit(main())
