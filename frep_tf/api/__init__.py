"""The public, Keras-native library API (docs/library.md), re-exported lazily by `frep_tf`:

- `reparameterize` (frep_tf.api.reparameterize): any functional or Sequential model with its Conv2D and
  Dense layers factored;
- `callbacks` (frep_tf.api.callbacks): the temporal ensemble and global pruning for the user's own `fit`;
- `fuse` and `export` are the modules frep_tf/fuse.py and frep_tf/export.py, made callable
  (frep_tf.api.callable_module).

Importing this package imports nothing else.
"""
