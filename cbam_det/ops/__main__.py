"""``python -m cbam_det.ops``: compile (or find) the fused CPU kernels and say where they are."""

import sys
import time

from . import build_dir, gate_ext

t0 = time.time()
ext = gate_ext(verbose='-v' in sys.argv)
if ext is None:
    sys.exit('cbam_det: fused CPU kernels unavailable (see the warning above); the PyTorch path will be used')
print(f'cbam_det: fused CPU kernels ready in {build_dir()} ({time.time() - t0:.1f} s)')
