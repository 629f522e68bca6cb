"""The paper's analyses of FlexiViT, each a library plus a CLI writing a table, a plot and results.json.

  python -m flexivit_jax.analysis.resize_methods --out OUT   # Fig. 3: how to resize the kernel
  python -m flexivit_jax.analysis.zero_shot --out OUT        # PI-resized ViT vs FlexiViT
  python -m flexivit_jax.analysis.cka --out OUT              # representations across grids

Without --checkpoint each trains its own small subject on the bundled digits.
Installed, the same run as `flexivit-analysis NAME ARGS...` (`analysis/__main__.py`).
"""
