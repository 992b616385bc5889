"""The reference architectures under their stable name, for `--model-factory tao_qc.zoo:RTDETRStyle`
and the like (they live in `tao_qc.testing.zoo`). Importing this module imports torch."""

from tao_qc.testing.zoo import *  # noqa: F401,F403
from tao_qc.testing.zoo import build, export_zoo, input_shape  # noqa: F401
