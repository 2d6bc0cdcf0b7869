"""Test (evaluate) a checkpoint; the same command line and behaviour as mmdet 3.3's tools/test.py.

python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                     [--show] [--show-dir DIR] [--wait-time S] [--cfg-options k=v ...]
                     [--launcher none|pytorch|slurm|mpi] [--tta]
"""

import argparse
import json
import os.path as osp
import sys

from mmdet.utils import setup_cache_size_limit_of_dynamo
from mmengine.config import Config, ConfigDict
from mmengine.evaluator import DumpResults

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a clone without install
import cbam_det  # noqa: E402,F401  (only registration: configs work without custom_imports)
from cbam_det.engine import add_runner_options, build_runner, load_config, parse_runner_args  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing evaluation metrics')
    parser.add_argument('--out', type=str, help='dump predictions to a pickle file for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory (inside work_dir) where painted images are saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (config needs tta_model)')
    add_runner_options(parser)
    return parse_runner_args(parser)


def trigger_visualization_hook(cfg: Config, args: argparse.Namespace) -> Config:
    """Turn on mmdet's DetVisualizationHook for --show / --show-dir."""
    default_hooks = cfg.default_hooks
    if 'visualization' not in default_hooks:
        raise RuntimeError('--show/--show-dir need default_hooks.visualization=dict(type="DetVisualizationHook")')
    vis = default_hooks['visualization']
    vis['draw'] = True
    if args.show:
        vis['show'] = True
        vis['wait_time'] = args.wait_time
    if args.show_dir:
        vis['test_out_dir'] = args.show_dir
    return cfg


def main() -> None:
    args = parse_args()
    setup_cache_size_limit_of_dynamo()
    cfg = load_config(args)

    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)

    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise RuntimeError('--tta needs "tta_model" and "tta_pipeline" in the config')
        cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
        test_data_cfg = cfg.test_dataloader.dataset
        while 'dataset' in test_data_cfg:
            test_data_cfg = test_data_cfg['dataset']
        if 'batch_shapes_cfg' in test_data_cfg:
            test_data_cfg.batch_shapes_cfg = None
        test_data_cfg.pipeline = cfg.tta_pipeline

    runner = build_runner(cfg, args, 'test_dataloader')

    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl or .pickle file, got {args.out!r}')
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))

    metrics = runner.test()
    if runner.rank == 0:  # one machine-readable line (used by tools/run_demo.sh and the tests)
        print(
            'cbam_det metrics: ' + json.dumps({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        )


if __name__ == '__main__':
    main()
