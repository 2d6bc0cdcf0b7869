"""Prove that a wheelhouse installs on the lent GPU machine, from the wheels' own metadata and
without a network: every wheel fits CPython 3.12 on x86-64 Linux, the requirement list is met by
exactly one wheel each, nothing is carried that the machine already has, and every requirement
a wheel declares (its ``Requires-Dist`` for Linux, x86-64, CPython 3.12, no extras) is met by
another carried wheel or by a package the machine has.

    python tools/analysis/wheelhouse_check.py                       # wheelhouse/gpu against the records
    python tools/analysis/wheelhouse_check.py --installed           # against this Python's packages
    python tools/analysis/wheelhouse_check.py --allow-missing onedl-mmcv --budget-mib 60 --json F

The machine's packages are ``requirements/gpu_machine.txt`` (names as read on the machine, a
version where one was recorded); ``--installed`` takes the running Python's distributions
instead, with their real versions (gpu_check.sh runs it there before installing). A requirement
on a machine package whose version was not recorded is met by name and listed as unverified;
``opencv-python`` is met by ``opencv-python-headless`` (the same ``cv2`` module; the machine has
the headless build, and everything is installed with ``--no-deps``, so pip never asks for the
other). ``--budget-mib``: the working tree that travels to the machine (tracked and untracked,
not ignored, files) plus the wheelhouse must fit in it.

Exit status 1 on an error (each named); unverified versions and aliases are notes.
"""

import argparse
import email.parser
import json
import os
import os.path as osp
import subprocess
import sys
import zipfile
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

__all__ = [
    'REPO',
    'ALIASES',
    'Wheel',
    'Report',
    'target_environment',
    'supported_tags',
    'read_requirements',
    'read_machine',
    'installed_packages',
    'read_wheel',
    'check',
    'tree_bytes',
    'transfer_bytes',
]

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: a requirement met by another distribution of the same import package: name -> provider
ALIASES = {'opencv-python': 'opencv-python-headless'}


class Wheel(NamedTuple):
    """One wheel file: its project (canonical name), version, tags, declared requirements and
    Requires-Python."""

    path: str
    name: str
    version: Version
    tags: frozenset
    requires: Tuple[Requirement, ...]
    requires_python: Optional[SpecifierSet]


class Report(NamedTuple):
    """The outcome: ``errors`` (the set would not install or would miss a requirement),
    ``notes`` (unverified versions, aliases), and the carried wheels by project."""

    errors: List[str]
    notes: List[str]
    carried: Dict[str, Wheel]

    def to_json(self) -> dict:
        return dict(
            errors=self.errors,
            notes=self.notes,
            carried={
                n: dict(file=osp.basename(w.path), version=str(w.version), bytes=osp.getsize(w.path))
                for n, w in sorted(self.carried.items())
            },
        )


def target_environment(python: str = '3.12', full: str = '3.12.3') -> Dict[str, str]:
    """PEP 508 marker values of the machine: CPython ``python`` on x86-64 Linux."""
    return dict(
        python_version=python,
        python_full_version=full,
        implementation_name='cpython',
        implementation_version=full,
        platform_python_implementation='CPython',
        platform_system='Linux',
        platform_machine='x86_64',
        platform_release='',
        platform_version='',
        sys_platform='linux',
        os_name='posix',
        extra='',
    )


def supported_tags(python: str = '3.12', glibc: Tuple[int, int] = (2, 28)) -> frozenset:
    """The wheel tags pip accepts for CPython ``python`` on x86-64 Linux with ``glibc``:
    ``manylinux_2_5`` up to it (and the legacy names), and ``linux_x86_64`` (a wheel built on
    a Linux machine, as the mmcv build is)."""
    version = tuple(int(p) for p in python.split('.'))
    platforms = [f'manylinux_{glibc[0]}_{m}_x86_64' for m in range(glibc[1], 4, -1)]
    platforms += ['manylinux2014_x86_64', 'manylinux2010_x86_64', 'manylinux1_x86_64', 'linux_x86_64']
    interp = f'cp{version[0]}{version[1]}'
    tags = set(cpython_tags(version, abis=[interp, 'abi3', 'none'], platforms=platforms))
    tags |= set(compatible_tags(version, interpreter=interp, platforms=platforms))
    return frozenset(tags)


def _lines(path: str) -> Iterable[str]:
    with open(path) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                yield line


def read_requirements(path: str) -> Dict[str, Requirement]:
    """A requirements file (one ``name==version`` per line, ``#`` comments) by canonical name."""
    out = {}
    for line in _lines(path):
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in out:
            raise ValueError(f'{path}: {req.name} is listed twice')
        out[name] = req
    return out


def read_machine(path: str) -> Dict[str, Optional[Version]]:
    """The machine's packages (``name`` or ``name==version`` per line) by canonical name; the
    version None where none was recorded."""
    out: Dict[str, Optional[Version]] = {}
    for line in _lines(path):
        req = Requirement(line)
        pins = [s.version for s in req.specifier if s.operator in ('==', '===')]
        out[canonicalize_name(req.name)] = Version(pins[0]) if pins else None
    return out


def installed_packages() -> Dict[str, Optional[Version]]:
    """The running Python's distributions with their versions (the machine, when run there)."""
    from importlib import metadata

    out: Dict[str, Optional[Version]] = {}
    for dist in metadata.distributions():
        name = dist.metadata['Name']
        if name:
            out[canonicalize_name(name)] = Version(dist.version)
    return out


def read_wheel(path: str) -> Wheel:
    """A wheel's name, version and tags from its file name, its requirements from its METADATA."""
    name, version, _, tags = parse_wheel_filename(osp.basename(path))
    with zipfile.ZipFile(path) as z:
        meta = [n for n in z.namelist() if n.count('/') == 1 and n.endswith('.dist-info/METADATA')]
        if len(meta) != 1:
            raise ValueError(f'{osp.basename(path)}: {len(meta)} METADATA files in the wheel (want 1)')
        msg = email.parser.Parser().parsestr(z.read(meta[0]).decode('utf-8'))
    if canonicalize_name(msg['Name']) != name or Version(msg['Version']) != version:
        raise ValueError(f'{osp.basename(path)}: METADATA says {msg["Name"]} {msg["Version"]}')
    requires = tuple(Requirement(r) for r in msg.get_all('Requires-Dist') or ())
    rp = msg['Requires-Python']
    return Wheel(path, name, version, frozenset(tags), requires, SpecifierSet(rp) if rp else None)


def _applies(req: Requirement, env: Dict[str, str]) -> bool:
    return req.marker is None or req.marker.evaluate(env)


def check(
    wheelhouse: str,
    requirements: Dict[str, Requirement],
    machine: Dict[str, Optional[Version]],
    python: str = '3.12',
    full: str = '3.12.3',
    glibc: Tuple[int, int] = (2, 28),
    allow_missing: Sequence[str] = (),
) -> Report:
    """Check the wheels of ``wheelhouse`` (see the module docstring); ``allow_missing``: listed
    projects that may be absent (e.g. ``onedl-mmcv`` before it is built)."""
    errors: List[str] = []
    notes: List[str] = []
    env = target_environment(python, full)
    tags = supported_tags(python, glibc)
    allow = {canonicalize_name(n) for n in allow_missing}
    unknown = sorted(allow - set(requirements))
    if unknown:
        raise ValueError(f'allow_missing: {unknown} are not in the requirement list ({sorted(requirements)})')

    carried: Dict[str, Wheel] = {}
    files = sorted(f for f in os.listdir(wheelhouse) if f.endswith('.whl')) if osp.isdir(wheelhouse) else []
    for f in files:
        try:
            w = read_wheel(osp.join(wheelhouse, f))
        except Exception as e:  # a broken or misnamed file: say which
            errors.append(f'{f}: unreadable wheel ({e})')
            continue
        if w.name in carried:
            errors.append(f'{w.name}: two wheels ({osp.basename(carried[w.name].path)}, {f}); pip refuses the install')
            continue
        carried[w.name] = w
        if not (w.tags & tags):
            errors.append(f'{f}: no tag fits CPython {python} on x86-64 Linux (glibc {glibc[0]}.{glibc[1]})')
        if w.requires_python is not None and not w.requires_python.contains(full):
            errors.append(f'{f}: Requires-Python {w.requires_python} excludes {full}')

    for name, req in sorted(requirements.items()):
        w = carried.get(name)
        if w is None:
            if name in allow:
                notes.append(f'{req}: no wheel (allowed missing)')
            else:
                errors.append(f'{req}: no wheel in {wheelhouse}')
        elif not req.specifier.contains(w.version, prereleases=True):
            errors.append(f'{req}: the wheel is version {w.version}')
    for name, w in sorted(carried.items()):
        if name not in requirements:
            errors.append(f'{osp.basename(w.path)}: not in the requirement list (carried for nothing)')
        if name in machine:
            have = machine[name]
            errors.append(f'{name}: carried, but the machine already has it ({have or "version not recorded"})')

    for w in sorted(carried.values()):
        for req in w.requires:
            if not _applies(req, env):
                continue
            dep = canonicalize_name(req.name)
            where = f'{w.name} {w.version} requires {req}'
            if dep in carried:
                if not req.specifier.contains(carried[dep].version, prereleases=True):
                    errors.append(f'{where}: the carried wheel is {carried[dep].version}')
            elif dep in machine:
                have = machine[dep]
                if have is None:
                    if str(req.specifier):
                        notes.append(f'{where}: the machine has {req.name}, version not recorded (unverified)')
                elif not req.specifier.contains(have, prereleases=True):
                    errors.append(f'{where}: the machine has {have}')
            elif dep in ALIASES and canonicalize_name(ALIASES[dep]) in machine:
                alias = ALIASES[dep]
                have = machine[canonicalize_name(alias)]
                notes.append(f"{where}: met by the machine's {alias} {have or '(version not recorded)'} (same module)")
                if have is not None and not req.specifier.contains(have, prereleases=True):
                    errors.append(f"{where}: the machine's {alias} is {have}")
            else:
                errors.append(f'{where}: neither carried nor on the machine')
    return Report(errors, notes, carried)


def tree_bytes(repo: str = REPO) -> int:
    """Bytes of the working tree that travels to the device: tracked files and untracked ones that
    git does not ignore."""
    out = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    names = [n for n in out.decode().split('\0') if n]
    return sum(osp.getsize(osp.join(repo, n)) for n in names if osp.isfile(osp.join(repo, n)))


def transfer_bytes(wheelhouse: str, repo: str = REPO) -> Tuple[int, int]:
    """(tree bytes, wheelhouse bytes): what a device call carries with ``carry: [wheelhouse]``."""
    wh = sum(osp.getsize(osp.join(wheelhouse, f)) for f in os.listdir(wheelhouse)) if osp.isdir(wheelhouse) else 0
    return tree_bytes(repo), wh


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--wheelhouse', default=osp.join(REPO, 'wheelhouse', 'gpu'))
    parser.add_argument('--requirements', default=osp.join(REPO, 'requirements', 'gpu_check.txt'))
    parser.add_argument('--machine', default=osp.join(REPO, 'requirements', 'gpu_machine.txt'))
    parser.add_argument('--installed', action='store_true', help="the running Python's packages are the machine's")
    parser.add_argument('--python', default='3.12.3', help="the machine's Python (default 3.12.3)")
    parser.add_argument('--glibc', default='2.28', help='the oldest glibc the manylinux wheels may need (2.28)')
    parser.add_argument(
        '--allow-missing', nargs='*', default=[], metavar='NAME', help='listed projects that may lack a wheel'
    )
    parser.add_argument('--budget-mib', type=float, help='tree + wheelhouse must fit (MiB)')
    parser.add_argument('--json', help='write the report here')
    args = parser.parse_args(argv)
    parts = args.python.split('.')
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        parser.error(f'--python: want X.Y.Z, got {args.python!r}')
    g = args.glibc.split('.')
    if len(g) != 2 or not all(p.isdigit() for p in g):
        parser.error(f'--glibc: want X.Y, got {args.glibc!r}')
    if not osp.isdir(args.wheelhouse):
        parser.error(f'--wheelhouse: {args.wheelhouse} is not a folder (make it with tools/analysis/gpu_wheelhouse.sh)')
    for flag, path in (('--requirements', args.requirements), ('--machine', args.machine)):
        if not osp.isfile(path):
            parser.error(f'{flag}: no file {path}')
    reqs = read_requirements(args.requirements)
    machine = installed_packages() if args.installed else read_machine(args.machine)
    try:
        report = check(
            args.wheelhouse,
            reqs,
            machine,
            python='.'.join(parts[:2]),
            full=args.python,
            glibc=(int(g[0]), int(g[1])),
            allow_missing=args.allow_missing,
        )
    except ValueError as e:
        parser.error(str(e))
    res = report.to_json()
    res['machine'] = 'installed' if args.installed else osp.relpath(args.machine, REPO)
    if args.budget_mib is not None:
        tree, wh = transfer_bytes(args.wheelhouse)
        res['transfer'] = dict(tree_bytes=tree, wheelhouse_bytes=wh, budget_mib=args.budget_mib)
        line = (
            f'transfer: tree {tree / 2**20:.1f} MiB + wheelhouse {wh / 2**20:.1f} MiB = {(tree + wh) / 2**20:.1f} MiB'
        )
        if tree + wh > args.budget_mib * 2**20:
            report.errors.append(f'{line}, over the budget of {args.budget_mib:g} MiB')
        else:
            print(f'{line} (budget {args.budget_mib:g} MiB)')
    total = sum(osp.getsize(w.path) for w in report.carried.values())
    print(f'{len(report.carried)} wheels, {total / 2**20:.1f} MiB, checked against {res["machine"]}')
    for n in report.notes:
        print(f'note: {n}')
    for e in report.errors:
        print(f'ERROR: {e}')
    res['errors'] = report.errors
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    print('wheelhouse: OK' if not report.errors else f'wheelhouse: {len(report.errors)} error(s)')
    return 1 if report.errors else 0


if __name__ == '__main__':
    sys.exit(main())
