import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="small configurations only")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--quick") or os.environ.get("FASTRNN_BENCH_QUICK"):
        from configs import QUICK

        items[:] = [it for it in items if any(f"-{q}-" in it.name or it.name.endswith(f"-{q}]") for q in QUICK)]
