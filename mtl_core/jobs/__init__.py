"""The job runner (`runner`): a fair, bounded queue of runs kept in the store, and what trains them:
worker processes on this machine (`worker`) or tasks on a Ray cluster (`ray_backend`); `estimate` says
how long a run will take and wait. Knows the store and the engine, never a screen."""
