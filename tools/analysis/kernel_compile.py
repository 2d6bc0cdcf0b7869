"""Ahead-of-time compilation of the Triton kernels (cbam_det.kernels.library) for real GPU
targets without a GPU: what each specialization the kernel census records (census.py) costs
in registers and spills, and whether its PTX keeps the interpreter's numerics (no fused
multiply-adds, NaN-propagating maxima).

Triton compiles for ``sm_80``, ``sm_90``, ``sm_100`` and ``sm_120`` with the ptxas that ships
with its NVIDIA backend, and the bundled ``cuobjdump --dump-resource-usage`` reads each cubin.

    python tools/analysis/kernel_compile.py IN.json OUT.json

compiles ``{"specs": [[kernel, spec, warps], ...], "archs": [90, ...]}`` into a list of results
(run in a fresh process by :func:`compile_specs` when the caller has Triton's interpreter on).
"""

import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Sequence, Tuple

import toolkit  # noqa: F401  (only to put the repository on sys.path)

from cbam_det.kernels import launch as T
from cbam_det.kernels.library import KERNELS, SMALL_KERNELS

__all__ = ['ARCHS', 'REGISTER_LIMIT', 'MAX_KERNELS', 'compile_one', 'compile_specs', 'compile_problems']

ARCHS = (80, 90, 100, 120)
REGISTER_LIMIT = 128


def _ast_source(fn, spec: List[list]):
    """Triton's ASTSource for ``spec`` as its JIT would specialize it (ints equal to 1 and None
    become constants; pointers and ints divisible by 16 get the divisibility attribute)."""
    from triton.compiler import ASTSource

    names = [s[0] for s in spec]
    sig, consts, div, ones = {}, {}, [], []
    for i, (name, kind, value) in enumerate(spec):
        if kind == 'const' or (kind == 'int' and value == 1):
            sig[name], consts[name] = 'constexpr', value
            if kind == 'int':
                ones.append(i)
        elif kind == 'ptr':
            sig[name] = '*' + value[0]
            if value[1]:
                div.append(i)
        elif kind == 'int':
            sig[name] = 'i32' if -(2**31) <= value < 2**31 else 'i64'
            if value % 16 == 0:
                div.append(i)
        else:
            sig[name] = 'fp32'
    params = inspect.signature(ASTSource.__init__).parameters
    if 'constexprs' in params:  # triton >= 3.2: names, attributes per argument path
        attrs = {(i,): [['tt.divisibility', 16]] for i in div}
        return ASTSource(fn, sig, consts, attrs)
    from triton.compiler.compiler import AttrsDescriptor  # triton 3.0 / 3.1

    index = {n: i for i, n in enumerate(names)}
    signature = {index[n]: t for n, t in sig.items() if t != 'constexpr'}
    constants = {index[n]: v for n, v in consts.items()}
    return ASTSource(fn, signature, constants, AttrsDescriptor(divisible_by_16=div, equal_to_1=ones))


def _tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', name)
    if not os.path.exists(path):
        raise FileNotFoundError(f'kernel_compile: {name} is not bundled with this triton ({path})')
    return path


def resource_usage(cubin: bytes) -> Dict[str, int]:
    """Registers, stack, local and shared memory per thread / block, from ``cuobjdump
    --dump-resource-usage``, and the spills: the local-memory stores and loads of the machine code
    (``STL``/``LDL``; a stack frame alone can be a call's return address, which ptxas uses for some
    loops with barriers)."""
    with tempfile.NamedTemporaryFile(suffix='.cubin', delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([_tool('cuobjdump'), '--dump-resource-usage', f.name], capture_output=True, text=True)
        sass = subprocess.run([_tool('cuobjdump'), '--dump-sass', f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r'REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)', out.stdout)
    if m is None:
        raise RuntimeError(f'kernel_compile: cuobjdump printed no resource usage:\n{out.stdout}\n{out.stderr}')
    usage = dict(zip(('registers', 'stack', 'shared', 'local'), map(int, m.groups())))
    usage['spills'] = len(re.findall(r'\b(?:STL|LDL)(?:\.\w+)*\b', sass))
    return usage


def compile_one(kernel: str, spec: List[list], warps: int, arch: int) -> dict:
    """Compile one specialization for ``sm_<arch>``: resource usage, or ``skipped`` with the
    reason where this triton cannot target the architecture."""
    import triton
    from triton.backends.compiler import GPUTarget

    if T.INTERPRETED:
        raise RuntimeError('kernel_compile: compile without TRITON_INTERPRET=1 (the interpreter replaces the JIT)')
    fn = KERNELS[kernel]
    try:
        compiled = triton.compile(
            _ast_source(fn, spec),
            target=GPUTarget('cuda', arch, 32),
            options={'num_warps': warps, 'enable_fp_fusion': False},  # as cbam_det.kernels.launch launches them
        )
    except Exception as e:  # noqa: BLE001 - a target this triton/ptxas does not know is reported, not raised
        text = f'{type(e).__name__}: {e}'
        if _unsupported_target(text):
            return dict(
                skipped=f'triton {triton.__version__} cannot compile for sm_{arch}: {text.splitlines()[0][:200]}'
            )
        raise
    ptx = compiled.asm['ptx']
    return dict(
        resource_usage(compiled.asm['cubin']),
        fused_multiply_adds=len(re.findall(r'\bfma\.rn(?:\.ftz)?\.f32\b', ptx)),  # fp-fusion off: none
        nan_max=len(re.findall(r'\bmax\.NaN\.f32\b', ptx)),  # NaN-propagating max instructions
        nan_min=len(re.findall(r'\bmin\.NaN\.f32\b', ptx)),
        plain_max_min=len(re.findall(r'\b(?:max|min)(?:\.ftz)?\.f32\b', ptx)),  # ones that drop NaN
        fp_fusion=bool(compiled.metadata.enable_fp_fusion) if hasattr(compiled.metadata, 'enable_fp_fusion') else None,
    )


#: kernels that take a maximum (their PTX must hold the NaN-propagating ``max.NaN.f32``)
MAX_KERNELS = ('_pool_kernel', '_spatial_pool_kernel')


def compile_problems(results: Sequence[dict]) -> List[tuple]:
    """What a compiled specialization must not show: for a kernel that streams full-size tensors,
    over :data:`REGISTER_LIMIT` registers or a spill (a local-memory store or load in its machine
    code: the bandwidth it would cost; the small per-channel and per-pixel kernels,
    ``SMALL_KERNELS``, have theirs reported, not limited); for every kernel, a fused multiply-add
    or fp-fusion on (recomputed values must round as in the interpreter, for the tie masks), and a
    maximum that is not NaN-propagating."""
    out, nan_max = [], {}
    for r in results:
        if 'skipped' in r:
            continue
        if r['kernel'] not in SMALL_KERNELS and (r['registers'] > REGISTER_LIMIT or r['spills'] or r['local']):
            out.append((r['kernel'], r['arch'], 'registers', r['registers'], r['spills'], r['local']))
        if r['fused_multiply_adds'] or r.get('fp_fusion'):
            out.append((r['kernel'], r['arch'], 'fused multiply-add', r['fused_multiply_adds']))
        if r['plain_max_min']:
            out.append((r['kernel'], r['arch'], 'a max or min that drops NaN', r['plain_max_min']))
        if r['kernel'] in MAX_KERNELS:  # (a one-pixel tile folds its max away: counted over all)
            nan_max[r['kernel']] = nan_max.get(r['kernel'], 0) + r['nan_max']
    out += [(k, 'no NaN-propagating max in any specialization') for k, n in nan_max.items() if not n]
    return out


def _unsupported_target(text: str) -> bool:
    return bool(
        re.search(r'not defined for option|[Uu]nsupported (gpu )?arch|is not a recognized processor|ptxas fatal', text)
    )


def compile_specs(specs: Sequence[list], archs: Sequence[int] = ARCHS, jobs: int = 0) -> List[dict]:
    """Compile every ``[kernel, spec, warps]`` for every arch: a list of dicts (kernel, arch,
    warps, spec, then registers, stack, local, shared, or ``skipped`` with the reason). With the
    interpreter on, or ``jobs`` > 1, the work runs in fresh processes, one arch each
    (``python tools/analysis/kernel_compile.py IN.json OUT.json``): an arch whose compile aborts the process
    (triton 3.1's LLVM on sm_100/sm_120) is reported skipped."""
    jobs = jobs or min(len(specs), os.cpu_count() or 1, 8)
    if not (T.INTERPRETED or jobs > 1):
        out = []
        for kernel, spec, warps in specs:
            for arch in archs:
                res = compile_one(kernel, spec, warps, arch)
                out.append(dict(kernel=kernel, arch=arch, warps=warps, spec=spec, **res))
        return out
    per_arch = max(1, jobs // len(archs))
    work = [(arch, list(specs[i::per_arch])) for arch in archs for i in range(per_arch)]
    out = []
    for i in range(0, len(work), jobs):  # at most ``jobs`` processes at a time
        out += _in_processes(work[i : i + jobs])
    return out


def _in_processes(work: List[Tuple[int, list]]) -> List[dict]:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}  # the JIT's compiler, not the interpreter
    env.setdefault('CBAM_DET_LAYERS_ONLY', '1')
    procs = []
    for arch, chunk in work:
        src = tempfile.NamedTemporaryFile('w', suffix='.json', delete=False)
        json.dump(dict(specs=chunk, archs=[arch]), src)
        src.close()
        cmd = [sys.executable, os.path.abspath(__file__), src.name, src.name + '.out']
        procs.append(
            (
                arch,
                chunk,
                src.name,
                subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
            )
        )
    results = []
    for arch, chunk, src, p in procs:
        _, err = p.communicate()
        os.unlink(src)
        if p.returncode != 0:
            if not _unsupported_target(err):
                raise RuntimeError(f'kernel_compile: the compile process failed:\n{err[-3000:]}')
            import triton

            why = next((line for line in err.splitlines() if 'ERROR' in line or 'not a recognized' in line), '')
            reason = f'triton {triton.__version__} cannot compile for sm_{arch}: {why.strip()[:200]}'
            results += [dict(kernel=k, arch=arch, warps=w, spec=sp, skipped=reason) for k, sp, w in chunk]
            continue
        with open(src + '.out') as f:
            results += json.load(f)
        os.unlink(src + '.out')
    return results


def main(argv: List[str]) -> int:
    if len(argv) != 2:
        print('usage: python tools/analysis/kernel_compile.py IN.json OUT.json', file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)
    results = compile_specs([tuple(s) for s in job['specs']], job['archs'], jobs=1)
    with open(argv[1], 'w') as f:
        json.dump(results, f)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
