"""Ask a trained CaffeNet what it sees: p(positive) / p(negative), and sentiment maps.

    python predict.py photo.jpg                       # label and probabilities
    python predict.py photos/ a.jpg --json            # one JSON record per image
    python predict.py photo.jpg --map                 # also photo_map.png (red/green overlay)
    python predict.py photo.jpg --map --map-style smooth --save-npy --out maps/

Classification follows the training's test path: the whole image resized to 256x256,
the centre 227x227 crop (or, with --oversample, the average over Caffe's ten crops),
BGR, minus the ImageNet mean. The map follows Campos et al. (2017): the classifier made
fully convolutional (fc6/fc7/fc8 as convolutions), the whole image resized to
--map-size (451), giving a grid of softmax cells (8x8 at 451), one per 32-pixel step.

Exit status: 0 when every image was processed, 1 when any image failed (each failure is
one line on stderr naming the file; the other images are still processed), 2 for a
usage, weights or device problem (nothing processed).
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WEIGHTS = os.path.join('weights', 'twitter.h5')    # relative to the repository root
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp',
                    '.ppm', '.pgm')
MAP_SUFFIX = '_map'
# Images kept in memory for drawing the maps of one batch, in pixels: a batch is run early
# when its originals reach this, so a folder of huge photos cannot exhaust the memory.
MAP_PIXEL_BUDGET = 64_000_000
# Largest --map-size: its 96 x 1022 x 1022 conv1 output alone is 400 MB of float32.
MAX_MAP_SIZE = 4096


class SetupError(Exception):
    """A problem that stops the whole run (weights, device, arguments): exit status 2."""


class ImageFailure(Exception):
    """One image could not be processed; the message is one line naming the file."""


# ------------------------------------------------------------------------ command line


def build_parser():
    """The argparse parser of predict.py."""
    from nn.device import add_device_argument
    parser = argparse.ArgumentParser(
        prog='predict.py',
        description='Visual sentiment of images with a fine-tuned CaffeNet: prints the '
                    'label and p(positive), p(negative) per image; --map also draws where '
                    'the network sees positive (green) and negative (red) content.',
        epilog='Exit status: 0 all images done, 1 some image failed (one line each on '
               'stderr, the others are still processed), 2 bad weights/device/arguments.')
    parser.add_argument('inputs', nargs='+', metavar='IMAGE|FOLDER',
                        help='image files, or folders whose image files (%s; not *%s.png, '
                             'not recursive) are all processed' % (
                                 ' '.join(IMAGE_EXTENSIONS), MAP_SUFFIX))
    parser.add_argument('--weights', default=None, metavar='FILE',
                        help='HDF5 weights (from train.py or tools/convert_caffemodel.py); '
                             f'default: {DEFAULT_WEIGHTS} in the repository, a fixed name: '
                             'copy or link the model you want there (train.py writes '
                             'weights/twitter_<agree>_fold<k>.h5)')
    parser.add_argument('--oversample', action='store_true',
                        help="average over Caffe's ten crops (corners, centre, mirrored) "
                             'instead of the centre crop')
    parser.add_argument('--json', action='store_true',
                        help='print one JSON record per image (JSON lines) instead of text; '
                             'a failed image gives {"file": ..., "error": ...}')
    parser.add_argument('--batch-size', type=int, default=8, metavar='N',
                        help='images per forward pass (default 8)')
    parser.add_argument('--map', action='store_true',
                        help='also write <name>_map.png: the image, at its own size, with '
                             'the sentiment map blended over it')
    parser.add_argument('--map-style', choices=('paper', 'smooth'), default=None,
                        help="with --map: paper (default): flat cells, green = p(positive), red = "
                             "p(negative), blended 50/50; smooth: bilinear, red-yellow-green "
                             "scale, legend strip at the bottom")
    parser.add_argument('--map-size', type=int, default=451, metavar='S',
                        help='side the image is resized to for the map (default 451 -> 8x8 '
                             f'cells); from 227 to {MAX_MAP_SIZE}. S = 227 + 32k gives (k+1)^2 cells; '
                             'otherwise Caffe\'s rounded-up pooling gives ceil((S-230)/32)+1 '
                             'cells per side')
    parser.add_argument('--save-npy', action='store_true',
                        help='with --map, also write <name>_map.npy: the raw probabilities, '
                             'float32 (num_classes, h, w) in class order (np.save)')
    parser.add_argument('--out', metavar='DIR', default=None,
                        help='write maps into DIR (created if needed) instead of next to '
                             'each image')
    parser.add_argument('--force', action='store_true',
                        help='overwrite existing map files (never done otherwise)')
    add_device_argument(parser)
    return parser


def check_args(parser, args):
    """Argument combinations argparse cannot check itself (parser.error exits with 2)."""
    if args.batch_size < 1:
        parser.error(f'--batch-size must be at least 1, got {args.batch_size}')
    from nn.sentiment_map import map_grid_size
    try:
        map_grid_size(args.map_size)    # the one place that knows which sizes give a map
    except ValueError as exc:
        parser.error(f'--map-size: {exc}')
    if args.map_size > MAX_MAP_SIZE:   # the network's activations grow with its square
        parser.error(f'--map-size must be at most {MAX_MAP_SIZE}, got {args.map_size}')
    for option, given in (('--save-npy', args.save_npy), ('--map-style', args.map_style)):
        if given and not args.map:
            parser.error(f'{option} needs --map')
    args.map_style = args.map_style or 'paper'
    if args.out is not None and not args.map:
        parser.error('--out needs --map (only maps are written to files)')
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f'--out {args.out}: exists and is not a folder')


# ------------------------------------------------------------------------------ inputs


def expand_inputs(inputs):
    """Command-line paths -> list of (image path, error message or None), in order.

    A folder contributes its image files (sorted; our own *_map.png outputs are skipped);
    a missing path or a folder without images becomes an error entry.
    """
    entries = []
    for path in inputs:
        if os.path.isdir(path):
            try:
                listing = os.listdir(path)
            except OSError as exc:
                entries.append((path, f'{path}: cannot list folder: {exc.strerror}'))
                continue
            names = sorted(n for n in listing
                           if not n.startswith('.')
                           and n.lower().endswith(IMAGE_EXTENSIONS)
                           and not n.lower().endswith(MAP_SUFFIX + '.png')
                           and os.path.isfile(os.path.join(path, n)))
            if not names:
                entries.append((path, f'{path}: folder has no image files '
                                      f'({" ".join(IMAGE_EXTENSIONS)})'))
            entries.extend((os.path.join(path, n), None) for n in names)
        elif os.path.exists(path):
            entries.append((path, None))
        else:
            entries.append((path, f'{path}: no such file or folder'))
    return entries


def map_paths(image_path, args):
    """(png path, npy path or None) of an image's map, next to it or in --out."""
    folder = args.out if args.out is not None else os.path.dirname(image_path)
    stem = os.path.splitext(os.path.basename(image_path))[0] + MAP_SUFFIX
    png = os.path.join(folder, stem + '.png')
    return png, (os.path.join(folder, stem + '.npy') if args.save_npy else None)


# ----------------------------------------------------------------------------- weights


class Model:
    """The network and what predict.py needs to know about its weight file.

    net: the fully convolutional CaffeNet (at 227x227 its output is the classifier's, as
    a 1x1 map). class_names: list of num_classes str.
    mean_shift: float32 (3, 1, 1) added to preprocessed images when the file's mean_bgr
    differs from the one preprocessing subtracts (zero for every file of this project).
    """

    def __init__(self, net, class_names, mean_shift):
        self.net = net
        self.class_names = class_names
        self.mean_shift = mean_shift

    def probabilities(self, batch):
        """Class probabilities of a (N, 3, S, S) float32 batch: (N, C, h, w) NumPy
        ((N, C, 1, 1) for S = 227)."""
        if self.mean_shift.any():
            batch = batch + self.mean_shift
        return self.net.predict(batch)


def resolve_weights(path):
    """The weight file to use: `path`, or the default one (checked to exist)."""
    if path is not None:
        return path
    default = os.path.join(ROOT, DEFAULT_WEIGHTS)
    if not os.path.isfile(default):
        folder = os.path.dirname(default)
        found = sorted(n for n in os.listdir(folder) if n.endswith('.h5')) \
            if os.path.isdir(folder) else []
        hint = f'; weight files there: {", ".join(found)}' if found else ''
        raise SetupError(f'{default}: no such weight file (the default); pass --weights FILE '
                         f'or put the model there{hint}')
    return default


# The last model loaded by this process, so that repeated main() calls (tests, notebooks)
# do not re-read 230 MB: ((real path, inode, size, mtime, device name, tf32), Model).
_LAST_MODEL = [None, None]


def load_model(path, device):
    """Read a CaffeNet weight file and build the fully convolutional network on `device`.

    One network serves both jobs: at 227x227 the fully convolutional net gives exactly the
    classifier's output (a 1x1 map), and at 451x451 the 8x8 sentiment map. The last layer
    is the last entry of the file's layer_order; num_classes and class_names come from the
    root attributes (nn/caffenet.py's CaffeNet.from_file). Raises SetupError naming the
    file and what is wrong (missing, not HDF5, not CaffeNet, a layer missing or of the
    wrong shape). The result is cached for the same unchanged file and device.
    """
    try:
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, device.name,
               device.tf32)
    except OSError:
        key = None                              # load_weights reports the missing file
    if key is not None and _LAST_MODEL[0] == key:
        return _LAST_MODEL[1]
    _LAST_MODEL[:] = [None, None]               # free the old network before the new one
    model = _read_model(path, device)
    _LAST_MODEL[:] = [key, model]
    return model


def _read_model(path, device):
    """load_model without the cache."""
    import numpy as np
    from nn.caffenet import CaffeNet
    from nn.weights import MEAN_BGR, WeightsError

    try:
        # any_mean: a file trained with another mean is usable, shifted below.
        net, attrs = CaffeNet.from_file(path, device, fully_conv=True, any_mean=True)
    except WeightsError as exc:
        raise SetupError(str(exc)) from None
    # load_weights has checked that a mean_bgr attribute holds 3 numbers.
    mean = np.asarray(attrs.get('mean_bgr', MEAN_BGR), dtype=np.float64)
    mean_shift = (np.asarray(MEAN_BGR) - mean).astype(np.float32).reshape(3, 1, 1)
    return Model(net, net.class_names, mean_shift)


# ------------------------------------------------------------------------------ images


class Item:
    """One image on its way through a batch.

    crops: (k, 3, 227, 227) float32 (k = 1 centre crop, or 10 with --oversample);
    map_input: (3, S, S) float32 or None; rgb: (H, W, 3) uint8 kept for the overlay.
    probs (C,) and prob_map (C, h, w) are filled in by the forward pass.
    """

    def __init__(self, path, error=None):
        self.path = path
        self.error = error          # the image failed: nothing is printed for it
        self.map_error = None       # only its map failed (or would overwrite): the result
        self.crops = self.map_input = self.rgb = None
        self.png = self.npy = None
        self.probs = self.prob_map = None


def prepare(item, args, planned):
    """Load and preprocess item.path (sets crops, map_input, rgb); raise ImageFailure.

    planned: map paths already claimed by earlier images of this call (updated here), so
    two images with one name cannot overwrite each other's map. A map that cannot be
    written sets item.map_error instead: the image is still classified.
    """
    from nn import preprocess
    if args.map:
        item.png, item.npy = map_paths(item.path, args)
        outs = [os.path.abspath(p) for p in (item.png, item.npy) if p is not None]
        item.map_error = _map_conflict(item.path, outs, planned, args.force)
    try:
        rgb = preprocess.load_image(item.path)
    except preprocess.ImageError as exc:
        raise ImageFailure(str(exc)) from None
    except MemoryError:
        raise ImageFailure(f'{item.path}: cannot read image: too large for memory') from None
    resized = preprocess.resize_image(rgb, preprocess.RESIZE)
    item.crops = (preprocess.ten_crops(resized) if args.oversample
                  else preprocess.center_crop(resized)[None])
    if args.map and item.map_error is None:
        item.map_input = preprocess.resize_image(rgb, args.map_size)
        item.rgb = rgb
        planned.update((out, item.path) for out in outs)


def _map_conflict(path, outs, planned, force):
    """Why image `path` must not write its map files `outs` (absolute), or None."""
    for out in outs:
        if out in planned:
            if os.path.abspath(planned[out]) == os.path.abspath(path):
                return f'{path}: given twice; its map is written once'
            return (f'{path}: its map {out} would overwrite the map of {planned[out]} from '
                    'this call; use separate --out folders')
        if os.path.exists(out) and not force:
            return f'{path}: {out} exists; use --force to overwrite it'
    return None


def run_batch(model, items):
    """One forward pass for the classification crops (and one for the maps) of a batch.

    Sets item.probs (C,) as the mean over the item's crops and item.prob_map (C, h, w).
    """
    import numpy as np
    from nn.preprocess import average_over_crops
    ready = [item for item in items if item.error is None]
    if not ready:
        return
    # Every item has as many crops (1, or 10 with --oversample): one (B, k, ...) stack.
    probs = average_over_crops(model.probabilities, np.stack([item.crops for item in ready]))
    for item, item_probs in zip(ready, probs):
        item.probs = item_probs
    mapped = [item for item in ready if item.map_input is not None]
    if mapped:
        maps = model.probabilities(np.stack([item.map_input for item in mapped]))
        for item, prob_map in zip(mapped, maps):
            item.prob_map = np.ascontiguousarray(prob_map, dtype=np.float32)


def write_map(item, model, args):
    """Render and write item's overlay PNG (and .npy); raise ImageFailure on write errors."""
    from nn import sentiment_map
    neg, pos = sentiment_map.class_indices(model.class_names)
    overlay = sentiment_map.render_overlay(item.rgb, item.prob_map, neg, pos,
                                           style=args.map_style)
    try:
        sentiment_map.save_png(item.png, overlay)
        if item.npy is not None:
            try:
                sentiment_map.save_npy(item.npy, item.prob_map)
            except OSError:   # no PNG without its .npy: a rerun would refuse to replace it
                os.remove(item.png)
                raise
    except OSError as exc:
        raise ImageFailure(f'{item.path}: cannot write its map: {exc}') from None


def prob_order(class_names):
    """Class indices in printing order: positive then negative when the names say so."""
    names = [n.lower() for n in class_names]
    if 'positive' in names and 'negative' in names:
        first = [names.index('positive'), names.index('negative')]
        return first + [i for i in range(len(names)) if i not in first]
    return list(range(len(names)))


def record(item, model):
    """The JSON-able result of a processed item."""
    names = model.class_names
    label = int(item.probs.argmax())
    rec = {'file': item.path, 'label': names[label], 'label_index': label,
           'probs': {names[i]: float(item.probs[i]) for i in prob_order(names)}}
    if item.prob_map is not None:
        rec['map'] = item.png
        rec['map_cells'] = list(item.prob_map.shape[1:])
        if item.npy is not None:
            rec['npy'] = item.npy
    return rec


def text_line(rec, top=5):
    """The human-readable line of a record (the same numbers as the JSON, 4 decimals).

    Networks with more than `top` classes (an ImageNet model) show the `top` most likely.
    """
    items = list(rec['probs'].items())
    if len(items) > top:
        items = sorted(items, key=lambda kv: -kv[1])[:top]
    probs = '  '.join(f'p({name})={p:.4f}' for name, p in items)
    line = f"{rec['file']}: {rec['label']}  {probs}"
    if 'map' in rec:
        line += f"  map={rec['map']}"
        if 'npy' in rec:
            line += f"  npy={rec['npy']}"
    return line


def one_line(message):
    """Error messages are one line (an exception text may contain newlines)."""
    return ' '.join(str(message).split())


# -------------------------------------------------------------------------------- main


def report(item, model, args, out, err):
    """Write item's map (if any) and print its result or error; return True if it failed.
    An image whose map failed still has its result printed, then the map's error."""
    if item.error is None and item.prob_map is not None:
        try:
            write_map(item, model, args)
        except ImageFailure as exc:
            item.map_error, item.prob_map = str(exc), None
    if item.error is not None:
        message = one_line(item.error)
        print(f'predict.py: error: {message}', file=err)
        if args.json:
            print(json.dumps({'file': item.path, 'error': message}), file=out)
        return True
    rec = record(item, model)
    if item.map_error is not None:
        rec['map_error'] = one_line(item.map_error)
    print(json.dumps(rec) if args.json else text_line(rec), file=out)
    if item.map_error is not None:
        print(f"predict.py: error: {rec['map_error']}", file=err)
        return True
    return False


def main(argv=None, out=None, err=None):
    """Run predict.py with argv (default sys.argv[1:]); returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        return _run(args, out, err)
    except KeyboardInterrupt:   # the maps written so far are whole (written atomically)
        print('predict.py: interrupted', file=err)
        return 130


def _run(args, out, err):
    """main() after parsing: set up the device and the model, then every image."""
    try:
        from nn.device import DeviceError, get_device
        try:
            device = get_device(args.device, tf32=args.tf32)
        except DeviceError as exc:
            raise SetupError(str(exc)) from None
        model = load_model(resolve_weights(args.weights), device)
        if args.map:
            from nn.sentiment_map import class_indices
            try:
                class_indices(model.class_names)
            except ValueError as exc:
                raise SetupError(f'--map: {exc}') from None
            if args.out is not None:
                try:
                    os.makedirs(args.out, exist_ok=True)
                except OSError as exc:
                    raise SetupError(f'--out {args.out}: cannot create the folder: '
                                     f'{exc.strerror or exc}') from None
    except (SetupError, OSError) as exc:
        print(f'predict.py: error: {one_line(exc)}', file=err)
        return 2
    try:
        return _predict_all(model, args, out, err)
    except BrokenPipeError:     # the reader went away (`| head`): stop quietly
        if out is sys.stdout:   # and keep Python from failing again when it flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:      # writing the results failed (a full disk, say)
        print(f'predict.py: error: cannot write the results: {one_line(exc)}', file=err)
        return 1


def _predict_all(model, args, out, err):
    """Classify (and map) every input in batches, printing each result; the exit status."""
    failed = False
    planned = {}
    batch, pixels = [], 0
    entries = expand_inputs(args.inputs)
    for index, (path, error) in enumerate(entries):
        item = Item(path, error)
        if item.error is None:
            try:
                prepare(item, args, planned)
                pixels += 0 if item.rgb is None else item.rgb.shape[0] * item.rgb.shape[1]
            except ImageFailure as exc:
                item.error = str(exc)
        batch.append(item)
        ready = sum(item.error is None for item in batch)
        if ready >= args.batch_size or pixels >= MAP_PIXEL_BUDGET or index == len(entries) - 1:
            run_batch(model, batch)
            for done in batch:
                failed |= report(done, model, args, out, err)
            batch, pixels = [], 0
        out.flush()
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
