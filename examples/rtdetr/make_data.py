"""Make the RT-DETR example's files (seeded, about 30 s on 2 cores): the zoo's RT-DETR-shaped detector
trained briefly on coloured shapes, and the labelled sets it is calibrated and evaluated on.

    python examples/rtdetr/make_data.py     # writes rtdetr.pth, calib.npz, val.npz, val.json here
"""

import json
from pathlib import Path

import numpy as np
import torch

from tao_qc.testing.zoo_shapes import shapes_dataset, train_rtdetr

here = Path(__file__).resolve().parent
torch.save(train_rtdetr(seed=0).state_dict(), here / "rtdetr.pth")
val, coco = shapes_dataset(200, seed=7)
np.savez(here / "val.npz", images=val)
(here / "val.json").write_text(json.dumps(coco))
calibration, _ = shapes_dataset(64, seed=8)
np.savez(here / "calib.npz", images=calibration)
print(f"wrote {here}/rtdetr.pth, calib.npz, val.npz and val.json ({len(coco['annotations'])} boxes on {len(val)} images)")
