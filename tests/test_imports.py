"""The package's import graph follows the data flow downward only: no circle, and no import inside a function that hides an
upward dependency. The graph is read from the source (module-level and in-function imports alike), not from `sys.modules`."""
import ast
from pathlib import Path
import pytest

PKG = Path(__file__).resolve().parents[1] / 'adpd'
# Layers, lowest first: a module may import only from a lower layer (or, inside a package, from its own package).
LAYERS = [('adpd', 'core'), ('transforms', 'synthetic'), ('data',), ('models',), ('losses',), ('learner',), ('evaluate',),
          ('testing',), ('viz',), ('run',), ('recipes',), ('predict', 'export'), ('speed',), ('train',)]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}

def module_name(f:Path, pkg:Path=PKG) -> str:
    parts = f.relative_to(pkg.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)

def imports(f:Path, pkg_dir:Path=PKG):
    "`(imported adpd module, line, inside a function?)` for every import of the package in the file `f`."
    mod, tree = module_name(f, pkg_dir), ast.parse(f.read_text())
    pkg = mod if f.name == '__init__.py' else mod.rpartition('.')[0]
    funcs = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(fn)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import): names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ''
            if n.level:
                up = pkg.split('.')[:len(pkg.split('.')) - (n.level - 1)]
                base = '.'.join(up + ([base] if base else []))
            names = [base] + [f'{base}.{a.name}' for a in n.names]
        else: continue
        for name in names:
            if name == 'adpd' or name.startswith('adpd.'):
                yield name, n.lineno, id(n) in funcs

def graph(pkg:Path=PKG):
    "`{module: {imported module: (line, in function)}}` over the package's source files (the generated index excepted)."
    files = [f for f in pkg.rglob('*.py') if f.name != '_modidx.py']
    mods = {module_name(f, pkg): f for f in files}
    g = {}
    for m, f in mods.items():
        g[m] = {}
        for name, line, inner in imports(f, pkg):
            while name not in mods and '.' in name: name = name.rpartition('.')[0]   # `from adpd.models import x`: the module, not the name
            if name in mods and name != m: g[m].setdefault(name, (line, inner))
    return g, mods

def layer(m:str) -> int:
    top = m.split('.')[1] if m.count('.') else m
    if top not in RANK: pytest.fail(f"{m}: a module missing from LAYERS in {__file__}; place it in the data flow")
    return RANK[top]

def upward(g, mods):
    "The imports of graph `g` that do not go down a layer, as readable lines."
    return [f"{mods[m].relative_to(mods[m].parents[m.count('.')])}:{line} imports {t}{' inside a function' if inner else ''} (layer {layer(t)} ≥ {layer(m)})"
            for m, ts in g.items() for t, (line, inner) in ts.items()
            if layer(t) >= layer(m) and not (t.split('.')[:2] == m.split('.')[:2] or 'adpd' in (t, m))]   # inside a package: the circle check

def circle(g):
    "One import circle of `g` as `[a, b, ..., a]`, or None."
    state, stack = {}, []
    def visit(m):
        state[m] = 'open'; stack.append(m)
        for t in g.get(m, {}):
            if state.get(t) == 'open': return stack[stack.index(t):] + [t]
            if t not in state and (c := visit(t)): return c
        state[m] = 'done'; stack.pop()
    for m in sorted(g):
        if m not in state and (c := visit(m)): return c

def test_every_import_goes_down():
    bad = upward(*graph())
    assert not bad, '\n'.join(bad)

def test_no_import_circle():
    c = circle(graph()[0])
    assert c is None, 'import circle: ' + ' → '.join(c or [])

def test_the_checks_see_function_imports(tmp_path):
    "A package whose lower module imports a higher one inside a function, relatively: both checks fail on it."
    pkg = tmp_path / 'adpd'
    (pkg / 'models').mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    (pkg / 'data.py').write_text('def show(b):\n    from .viz import show_pose\n    return show_pose(b)\n')
    (pkg / 'viz.py').write_text('from adpd.data import show\n')
    (pkg / 'models' / '__init__.py').write_text('from .card import x\n')
    (pkg / 'models' / 'card.py').write_text('from ..core import y\nx = 1\n')
    (pkg / 'core.py').write_text('y = 1\n')
    g, mods = graph(pkg)
    assert g['adpd.data'] == {'adpd.viz': (2, True)} and g['adpd.models'] == {'adpd.models.card': (1, False)}
    assert g['adpd.models.card'] == {'adpd.core': (1, False)}
    assert upward(g, mods) == ['adpd/data.py:2 imports adpd.viz inside a function (layer 8 ≥ 2)']
    assert circle(g) == ['adpd.data', 'adpd.viz', 'adpd.data']

# --- requirements: every third-party package the source imports is declared in settings.ini ---
import configparser, re, sys
DIST = {'cv2': 'opencv-python-headless', 'PIL': 'pillow', 'sklearn': 'scikit-learn', 'yaml': 'pyyaml'}   # import name → distribution

def third_party(pkg:Path=PKG):
    "`{top-level import name: (file, line, inside a function?)}` of the non-stdlib, non-adpd imports in the package's source."
    out = {}
    for f in sorted(pkg.rglob('*.py')):
        tree = ast.parse(f.read_text())
        funcs = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(fn)}
        for n in ast.walk(tree):
            if isinstance(n, ast.Import): names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and not n.level: names = [n.module]
            else: continue
            for name in names:
                top = name.split('.')[0]
                if top in sys.stdlib_module_names or top in ('adpd', '__future__'): continue
                prev = out.get(top)
                if prev is None or (prev[2] and id(n) not in funcs): out[top] = (f.name, n.lineno, id(n) in funcs)
    return out

def declared(key):
    cfg = configparser.ConfigParser(); cfg.read(PKG.parent / 'settings.ini')
    return {re.split(r'[<>=!~\[ ]', r)[0].lower() for r in cfg['DEFAULT'].get(key, '').split()}

def test_requirements_complete():
    "Module-level imports are requirements; imports inside a function (optional features) are requirements or extras."
    req, extra = declared('requirements'), declared('deploy_requirements') | declared('dev_requirements') | declared('log_requirements')
    miss = [f"{f}:{line} imports {top} ({DIST.get(top, top)}), not in settings.ini's "
            + ('requirements' if not inner else 'requirements nor the extras')
            for top, (f, line, inner) in third_party().items()
            if DIST.get(top, top).lower() not in (req if not inner else req | extra)]
    assert not miss, '\n'.join(miss)

# --- no dead imports: every name a module imports at its top is used in it (or re-exported in its __all__) ---
SIDE_EFFECTS = {('learner.py', 'fastai')}   # `import fastai.callback.all`: fastai's Learner methods (lr_find, to_fp16, ...) patched in

def unused_imports(f:Path) -> list:
    "Names bound by the module-level imports of `f` (also under `with`/`try`) that the module never reads nor lists in `__all__`."
    tree = ast.parse(f.read_text())
    bound = {}
    for top in tree.body:
        for n in ([top] if isinstance(top, (ast.Import, ast.ImportFrom)) else ast.walk(top) if isinstance(top, (ast.With, ast.Try)) else []):
            if isinstance(n, ast.Import): bound.update({(a.asname or a.name).split('.')[0]: n.lineno for a in n.names})
            elif isinstance(n, ast.ImportFrom) and n.module != '__future__':
                bound.update({a.asname or a.name: n.lineno for a in n.names if a.name != '*'})
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    exported = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], 'id', '') == '__all__' and isinstance(n.value, (ast.List, ast.Tuple))), [])
    return [f"{f.name}:{line} imports {k}, unused" for k, line in bound.items()
            if k not in used and k not in exported and (f.name, k) not in SIDE_EFFECTS]

def test_no_dead_imports(tmp_path):
    bad = [u for f in sorted(PKG.rglob('*.py')) if f.name != '_modidx.py' for u in unused_imports(f)]
    assert not bad, '\n'.join(bad)
    (tmp_path / 'm.py').write_text('import math, os\nfrom pathlib import Path\nprint(os.sep)\n')     # the check finds them
    assert unused_imports(tmp_path / 'm.py') == ['m.py:1 imports math, unused', 'm.py:2 imports Path, unused']

@pytest.mark.parametrize('first', ['every module', 'adpd.learner', 'adpd.run', 'adpd.predict', 'adpd.export'])
def test_importing_the_package_says_nothing(first):
    """Importing the package prints no warning a user would see (fastai's import-time `torch.jit.script` notice is silenced where
    fastai is imported), whichever module a user imports first."""
    import subprocess
    mods = sorted({'adpd.' + '.'.join(f.relative_to(PKG).with_suffix('').parts).removesuffix('.__init__')
                   for f in PKG.rglob('*.py') if f.name != '_modidx.py'} - {'adpd.'}) if first == 'every module' else [first]
    r = subprocess.run([sys.executable, '-c', '; '.join(f'import {m}' for m in mods)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stderr == '', r.stderr[-2000:]
