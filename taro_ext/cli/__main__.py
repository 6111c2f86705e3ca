"""``python -m taro_ext.cli``: the ``taro-ext`` command."""
import sys

from . import main

sys.exit(main())
