import sys

from gpt3d.cli import main

sys.exit(main())
