"""Training checkpoints: everything a run needs to continue exactly where it stopped.

One HDF5 file, written atomically (a crash mid-write leaves the previous checkpoint):

    weights/<layer>/{weight,bias}   the network's parameters (in the shapes the network
                                    holds them: Caffe blob shapes, but fc layers 4-D in a
                                    fully convolutional net; the network's dtype;
                                    nn/weights.py's write_params)
    solver/...                      SGDSolver.save_to_h5: iteration, momentum history,
                                    dropout counter
    attrs: loader_epoch, loader_position   where the shuffled data stream continues
           settings                        the run's settings as JSON, checked on resume
           extra                           anything else the trainer keeps (JSON)

The random state of a run is entirely counter-based (data order and crops from
(seed, epoch, position), dropout masks from (seed, dropout counter)), so these counters are
the random state. No pickle.
"""
import json
import os

from nn.atomic import atomic_write
from nn.weights import read_params, write_params


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or belongs to a run with other settings."""


def save_checkpoint(path, net, solver, loader_state, settings, extra=None):
    """Write net params, solver state, the loader's {'epoch', 'position'}, the settings
    dict and an optional JSON-able `extra` dict to `path`, atomically."""
    import h5py

    params = net.to_numpy_params()

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            write_params(f.create_group("weights"), params, dtype=net.dtype)
            solver.save_to_h5(f.create_group("solver"))
            f.attrs["loader_epoch"] = int(loader_state["epoch"])
            f.attrs["loader_position"] = int(loader_state["position"])
            f.attrs["settings"] = json.dumps(settings, sort_keys=True)
            f.attrs["extra"] = json.dumps(extra or {}, sort_keys=True)

    atomic_write(path, write)


def settings_differences(saved, settings, keys, what):
    """The settings among `keys` whose values differ, as "key: <what> old, now new"."""
    return [f"{k}: {what} {saved.get(k)!r}, now {settings.get(k)!r}"
            for k in keys if saved.get(k) != settings.get(k)]


def load_checkpoint(path, net, solver, settings=None, must_match=()):
    """Restore net and solver from `path`; return (loader_state, extra).

    When `settings` is given, every key in `must_match` must have the same value in the
    checkpoint's settings, else CheckpointError names the differing settings.
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if "settings" not in f.attrs:   # e.g. a weights file copied into checkpoints/
                raise CheckpointError(f"{path} is not a training checkpoint (no 'settings')")
            saved = json.loads(f.attrs["settings"])
            if settings is not None:
                differ = settings_differences(saved, settings, must_match, "checkpoint")
                if differ:
                    raise CheckpointError(f"checkpoint {path} was written by a run with other "
                                          f"settings ({'; '.join(differ)})")
            params = read_params(path, f["weights"])
            net.load_params(params, strict=True, source=path)
            solver.load_from_h5(f["solver"])
            loader_state = {"epoch": int(f.attrs["loader_epoch"]),
                            "position": int(f.attrs["loader_position"])}
            extra = json.loads(f.attrs["extra"])
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    return loader_state, extra
