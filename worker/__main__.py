import sys

from audiogw.shared.blas import single_threaded_blas

single_threaded_blas()  # before audiogw.worker.main imports numpy

from audiogw.worker.main import main  # noqa: E402

sys.exit(main())
