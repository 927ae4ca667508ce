"""python -m frep_tf.experiments.report WORKDIR"""

import sys

from frep_tf.experiments.report.write import main

sys.exit(main(sys.argv))
