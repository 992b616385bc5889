"""The entry of quantize-modelopt's child interpreter: `python -m tao_qc.passes.modelopt_child FD`
(see `tao_qc.passes.quantize_modelopt.ModelOptProcess`)."""

import sys

from tao_qc.passes.quantize_modelopt import child_main

if __name__ == "__main__":
    child_main(int(sys.argv[1]))
