import sys

from audiogw.worker.main import main

sys.exit(main())
