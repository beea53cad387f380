"""predict.py end to end: classification, sentiment maps, batching, bad input, weights errors.

The weights are a real-size CaffeNet made here (random, rescaled so that the output depends
visibly on the image) and saved once per module. Expected values are computed
independently of predict.py: preprocessing written out with nn.resize and NumPy slicing, the
plain classifier (fc layers as inner products) for the classification, and for the map
the classifier's fc6/fc7/fc8 applied as matrix products to every 6x6 window of pool5 (the
fully convolutional net is exactly that, except for zero padding at the borders).
"""
import io
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

import predict
from nn.caffenet import TRUNK_LAYERS, CaffeNet, caffenet_spec
from nn.resize import resize_linear
from nn.weights import MEAN_BGR, save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ['negative', 'positive']


def _make_image(seed, width, height):
    """A structured RGB uint8 picture (gradients and rectangles), not symmetric."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * xx / max(width - 1, 1), 255 * yy / max(height - 1, 1),
                    128 + 100 * np.sin(xx / 9.0 + yy / 23.0)], axis=-1)
    for _ in range(6):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        rgb[y0:y0 + height // 3, x0:x0 + width // 4] = rng.integers(0, 256, 3)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """(path, classifier CaffeNet) of a two-class model whose probabilities vary.

    Caffe's initial weights make every output about the same, so each layer is rescaled
    to He's variance (activations keep their scale) and the last layer is calibrated on
    two probe images so that the score difference has a spread of about 1.5.
    """
    net = CaffeNet(2, 'fc8_twitter', CLASSES, device='cpu', seed=11)
    init_std = {layer['name']: layer.get('std') for layer in caffenet_spec(2, 'fc8_twitter')}
    for name in net.param_layers:
        w = net.params[name]['weight']
        w *= np.float32(np.sqrt(2.0 / (w.size // w.shape[0])) / init_std[name])
        net.params[name]['bias'][:] = 0
    probe = np.stack([_crop_by_hand(_make_image(s, 90, 70)) for s in (1, 2)])
    scores = net.forward(probe)
    diff = scores[:, 1] - scores[:, 0]
    gain = 1.5 / max(abs(diff[1] - diff[0]), 1e-3)
    last = net.params['fc8_twitter']
    last['weight'] *= np.float32(gain)
    last['bias'][:] = np.float32([0.5, -0.5]) * np.float32(diff.mean() * gain)
    path = str(tmp_path_factory.mktemp('weights') / 'model.h5')
    net.save(path)
    return path, net


def _resize_bgr(rgb, size):
    """Independent preprocessing: OpenCV-exact linear resize of the whole image (nn.resize,
    tested on its own in tests/test_resize.py), then BGR and minus mean by hand."""
    resized = resize_linear(rgb, size, size).astype(np.float32)
    return (resized[:, :, ::-1] - np.float32(MEAN_BGR)).transpose(2, 0, 1)


def _crop_by_hand(rgb):
    """The test path: 256x256, centre 227 crop (offset 14)."""
    return np.ascontiguousarray(_resize_bgr(rgb, 256)[:, 14:241, 14:241])


def _save(path, rgb, **kw):
    Image.fromarray(rgb).save(path, **kw)
    return str(path)


def _run(argv):
    """main(argv) in-process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = predict.main([str(a) for a in argv], out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def _json_records(argv):
    status, out, err = _run(list(argv) + ['--json'])
    return status, [json.loads(line) for line in out.splitlines()], err


# --------------------------------------------------------------------- classification


def test_classification_matches_independent_preprocessing(tmp_path, weights):
    path, net = weights
    rgbs = [_make_image(3, 301, 203), _make_image(10, 240, 257)]     # odd, non-square
    imgs = [_save(tmp_path / f'{i}.png', rgb) for i, rgb in enumerate(rgbs)]
    status, records, err = _json_records(imgs + ['--weights', path, '--device', 'cpu'])
    assert status == 0, err
    expected = net.predict(np.stack([_crop_by_hand(rgb) for rgb in rgbs]))
    for img, rec, exp in zip(imgs, records, expected):
        assert rec['file'] == img and list(rec['probs']) == ['positive', 'negative']
        got = np.array([rec['probs']['negative'], rec['probs']['positive']])
        np.testing.assert_allclose(got, exp, rtol=1e-5, atol=1e-7)
        assert rec['label'] == CLASSES[int(exp.argmax())]
        assert 0.02 < exp[1] < 0.98                           # not saturated: the test can fail
    # The text output shows the same numbers, rounded to 4 decimals, one line per image.
    status, text, _ = _run(imgs + ['--weights', path])
    assert status == 0 and len(text.splitlines()) == 2
    for line, rec in zip(text.splitlines(), records):
        probs = '  '.join(f'p({k})={v:.4f}' for k, v in rec['probs'].items())
        assert line == f"{rec['file']}: {rec['label']}  {probs}"


def test_oversample_is_the_ten_crop_average(tmp_path, weights):
    path, net = weights
    rgb = _make_image(4, 257, 333)
    img = _save(tmp_path / 'b.png', rgb)
    _, records, _ = _json_records([img, '--weights', path, '--oversample'])
    full = _resize_bgr(rgb, 256)
    corners = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]
    crops = [full[:, t:t + 227, l:l + 227] for t, l in corners]
    crops += [c[:, :, ::-1] for c in crops]
    expected = net.predict(np.ascontiguousarray(np.stack(crops))).mean(axis=0)
    got = [records[0]['probs'][c] for c in CLASSES]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    centre_only = net.predict(_crop_by_hand(rgb)[None])[0]
    assert abs(centre_only[1] - got[1]) > 1e-4                # ten crops do change the result


def test_text_line_of_many_classes_shows_the_top_five():
    probs = {f'class{i}': p for i, p in enumerate([0.05, 0.3, 0.02, 0.2, 0.1, 0.25, 0.08])}
    line = predict.text_line({'file': 'x.jpg', 'label': 'class1', 'probs': probs})
    assert line == ('x.jpg: class1  p(class1)=0.3000  p(class5)=0.2500  p(class3)=0.2000  '
                    'p(class4)=0.1000  p(class6)=0.0800')


def test_many_images_in_one_call_equal_one_call_each(tmp_path, weights):
    path, _ = weights
    folder = tmp_path / 'folder'
    folder.mkdir()
    inside = [_save(folder / f'{n}.jpg', _make_image(20 + i, 231 + 13 * i, 250))
              for i, n in enumerate(['b', 'a'])]
    (folder / 'notes.txt').write_text('not an image')
    _save(folder / 'old_map.png', _make_image(30, 50, 50))   # our own output: skipped
    single = _save(tmp_path / 'single.png', _make_image(31, 300, 229))
    argv = [single, folder, '--weights', path, '--batch-size', '2', '--map', '--save-npy',
            '--out', tmp_path / 'together']
    status, together, err = _json_records(argv)
    assert status == 0, err
    order = [single] + sorted(inside)
    assert [r['file'] for r in together] == order
    for i, img in enumerate(order):
        _, (alone,), _ = _json_records([img, '--weights', path, '--map', '--save-npy',
                                        '--out', tmp_path / f'alone{i}'])
        for c in CLASSES:
            assert alone['probs'][c] == pytest.approx(together[i]['probs'][c], rel=1e-5)
        np.testing.assert_allclose(np.load(alone['npy']), np.load(together[i]['npy']),
                                   rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ sentiment maps


def _map_by_hand(net, x):
    """Sentiment map of one (3, S, S) input without the fully convolutional code path.

    The conv trunk (conv1 ... pool5) runs as its own network at S x S; then every 6x6
    window of pool5 goes through fc6, fc7 and the last layer as plain matrix products,
    with the classifier's (out, 9216) weights. Returns (C, h, w) probabilities.
    """
    spec = caffenet_spec(2, 'fc8_twitter')
    trunk = CaffeNet(spec=spec[:spec.index(next(l for l in spec if l['name'] == 'fc6'))],
                     input_size=x.shape[1], device='cpu', init='zeros')
    trunk.load_params({name: net.params[name] for name in trunk.param_layers}, strict=True)
    pool5 = trunk.forward(x[None])[0]                                 # (256, 13, 13) at 451
    side = pool5.shape[1] - 5
    feats = np.stack([pool5[:, i:i + 6, j:j + 6].ravel()
                      for i in range(side) for j in range(side)], axis=1)   # (9216, cells)
    for name, relu in (('fc6', True), ('fc7', True), ('fc8_twitter', False)):
        feats = net.params[name]['weight'] @ feats + net.params[name]['bias'][:, None]
        feats = np.maximum(feats, 0) if relu else feats
    e = np.exp(feats - feats.max(axis=0))
    return (e / e.sum(axis=0)).reshape(-1, side, side)


def test_map_451_is_8x8_and_matches_the_classifier_slid_over_pool5(tmp_path, weights):
    path, net = weights
    rgb = _make_image(5, 333, 251)
    img = _save(tmp_path / 'c.png', rgb)
    status, (rec,), err = _json_records([img, '--weights', path, '--map', '--save-npy'])
    assert status == 0, err
    assert rec['map'] == str(tmp_path / 'c_map.png') and rec['map_cells'] == [8, 8]
    probs = np.load(rec['npy'], allow_pickle=False)
    assert probs.shape == (2, 8, 8) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1, atol=1e-6)
    np.testing.assert_allclose(probs, _map_by_hand(net, _resize_bgr(rgb, 451)),
                               rtol=1e-4, atol=1e-6)
    assert np.ptp(probs[1]) > 0.01                           # the cells do differ
    with Image.open(rec['map']) as overlay:
        assert overlay.size == (333, 251) and overlay.mode == 'RGB'
        # The PNG is the paper overlay of exactly these probabilities.
        from nn.sentiment_map import render_overlay
        np.testing.assert_array_equal(np.asarray(overlay), render_overlay(rgb, probs, 0, 1))


def test_map_size_227_single_cell_is_the_classifier(tmp_path, weights):
    path, net = weights
    rgb = _make_image(6, 180, 260)
    img = _save(tmp_path / 'd.png', rgb)
    status, (rec,), _ = _json_records([img, '--weights', path, '--map', '--save-npy',
                                       '--map-size', '227'])
    probs = np.load(rec['npy'])
    assert status == 0 and probs.shape == (2, 1, 1)
    expected = net.predict(_resize_bgr(rgb, 227)[None])[0]
    np.testing.assert_allclose(probs[:, 0, 0], expected, rtol=1e-5, atol=1e-7)


def test_map_size_sets_the_grid_and_smooth_style(tmp_path, weights):
    path, _ = weights
    sizes = [(97, 301), (9, 13)]                             # tall, and tiny (resized up)
    imgs = [_save(tmp_path / f'{i}.png', _make_image(7 + i, w, h))
            for i, (w, h) in enumerate(sizes)]
    status, records, err = _json_records(imgs + ['--weights', path, '--map', '--save-npy',
                                                 '--map-size', '300', '--map-style', 'smooth'])
    assert status == 0, err
    for rec, size in zip(records, sizes):
        assert rec['map_cells'] == [4, 4]                   # ceil((300 - 230) / 32) + 1
        assert np.load(rec['npy']).shape == (2, 4, 4)
        with Image.open(rec['map']) as overlay:
            assert overlay.size == size


def test_output_is_never_overwritten_without_force(tmp_path, weights):
    path, _ = weights
    img = _save(tmp_path / 'f.png', _make_image(8, 240, 240))
    target = tmp_path / 'f_map.png'
    target.write_bytes(b'precious')
    status, out, err = _run([img, '--weights', path, '--map'])
    assert status == 1   # the map is refused, but the image is still classified
    assert out.count('\n') == 1 and out.startswith(f'{img}: ') and 'map=' not in out
    assert err.count('\n') == 1 and str(target) in err and '--force' in err
    assert target.read_bytes() == b'precious'
    status, out, _ = _run([img, '--weights', path, '--map', '--json'])
    rec = json.loads(out)
    assert status == 1 and 'label' in rec and str(target) in rec['map_error'] and 'map' not in rec
    status, _, _ = _run([img, '--weights', path, '--map', '--force'])
    assert status == 0 and target.read_bytes()[:4] == b'\x89PNG'
    # Two images with one name, one --out folder: the second would overwrite the first.
    other = tmp_path / 'other'
    other.mkdir()
    img2 = _save(other / 'f.png', _make_image(9, 240, 240))
    status, out, err = _run([img, img2, '--weights', path, '--map', '--out', tmp_path / 'o'])
    assert status == 1 and out.count('\n') == 2 and img2 in err and img in err
    assert err.count('\n') == 1 and 'would overwrite the map of' in err
    # The same image twice: one map, and the message says why.
    status, out, err = _run([img, img, '--weights', path, '--map', '--out', tmp_path / 'p'])
    assert status == 1 and out.count('\n') == 2 and 'given twice' in err


# -------------------------------------------------------------------------- bad input


def _exif_jpeg(path, rgb, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif.tobytes())
    return str(path)


def test_bad_and_unusual_images(tmp_path, weights):
    path, _ = weights
    rgb = _make_image(12, 250, 239)
    good = _save(tmp_path / 'good.png', rgb)
    grey = _make_image(13, 241, 233)[:, :, 0]
    files = {
        'good': good,
        'missing': str(tmp_path / 'missing.jpg'),
        'text': str(tmp_path / 'text.jpg'),
        'truncated': str(tmp_path / 'truncated.jpg'),
        'grey': _save(tmp_path / 'grey.png', grey),
        'grey_rgb': _save(tmp_path / 'grey_rgb.png', np.repeat(grey[:, :, None], 3, axis=2)),
        'rgba': str(tmp_path / 'rgba.png'),
        'palette': str(tmp_path / 'palette.gif'),
        'palette_rgb': str(tmp_path / 'palette_rgb.png'),
        'cmyk': str(tmp_path / 'cmyk.tif'),
        'cmyk_rgb': str(tmp_path / 'cmyk_rgb.png'),
        'sixteen': str(tmp_path / 'sixteen.png'),
        'exif': _exif_jpeg(tmp_path / 'exif.jpg', _make_image(14, 260, 231), 6),
        'exif_upright': str(tmp_path / 'exif_upright.png'),
        'exif_raw': str(tmp_path / 'exif_raw.png'),
        'tiny': _save(tmp_path / 'tiny.png', _make_image(15, 10, 7)),
        'huge': _save(tmp_path / 'huge.jpg', np.repeat(np.repeat(      # 24 megapixels
            _make_image(16, 300, 200), 20, axis=0), 20, axis=1), quality=80),
    }
    open(files['text'], 'w').write('this is not an image\n')
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, format='JPEG')
    open(files['truncated'], 'wb').write(jpeg.getvalue()[:len(jpeg.getvalue()) // 2])
    rgba = np.dstack([rgb, np.random.default_rng(0).integers(0, 256, rgb.shape[:2], np.uint8)])
    Image.fromarray(rgba).save(files['rgba'])
    Image.fromarray(rgb).convert('P', palette=Image.ADAPTIVE, colors=64).save(files['palette'])
    with Image.open(files['palette']) as im:
        im.convert('RGB').save(files['palette_rgb'])
    Image.fromarray(rgb).convert('CMYK').save(files['cmyk'])
    with Image.open(files['cmyk']) as im:
        assert im.mode == 'CMYK'
        im.convert('RGB').save(files['cmyk_rgb'])
    # 16-bit grey: the high byte is the 8-bit value, the low byte noise that must not matter.
    low = np.random.default_rng(1).integers(0, 256, grey.shape)
    Image.fromarray((grey.astype(np.uint16) * 256 + low).astype(np.uint16)).save(files['sixteen'])
    with Image.open(files['exif']) as im:                     # decoded pixels, not rotated
        raw = np.asarray(im.convert('RGB'))
    _save(files['exif_raw'], raw)
    _save(files['exif_upright'], np.ascontiguousarray(np.rot90(raw, k=-1)))   # 6: 90 deg CW
    with Image.open(files['sixteen']) as im:
        assert im.mode.startswith('I')

    names = list(files)
    status, records, err = _json_records([files[n] for n in names] + ['--weights', path])
    assert status == 1
    by_name = dict(zip(names, records))
    failed = {'missing', 'text', 'truncated'}
    assert {n for n, r in by_name.items() if 'error' in r} == failed
    lines = err.splitlines()
    assert len(lines) == len(failed)
    for n, line in zip([n for n in names if n in failed], lines):
        assert files[n] in line and line.startswith('predict.py: error: ')
        assert by_name[n]['error'] in line
    p = {n: by_name[n]['probs']['positive'] for n in names if n not in failed}
    for a, b in [('grey', 'grey_rgb'), ('palette', 'palette_rgb'), ('cmyk', 'cmyk_rgb'),
                 ('sixteen', 'grey'), ('exif', 'exif_upright')]:
        assert p[a] == pytest.approx(p[b], rel=1e-6), (a, b)
    assert p['rgba'] == pytest.approx(p['good'], rel=1e-6)    # alpha ignored, as Caffe
    assert abs(p['exif'] - p['exif_raw']) > 1e-4               # the rotation did matter
    assert 0 < p['tiny'] < 1 and 0 < p['huge'] < 1


def test_unreadable_file_and_failed_write_skip_only_that_image(tmp_path, weights, monkeypatch):
    path, _ = weights
    imgs = [_save(tmp_path / f'{n}.png', _make_image(21 + i, 230, 240))
            for i, n in enumerate(['locked', 'ok', 'nowrite'])]
    from nn.sentiment_map import save_png as real_save
    real_open = Image.open

    def open_locked(fp, *args, **kw):               # as root, chmod 000 would not stop a read
        if str(fp) == imgs[0]:
            raise PermissionError(13, 'Permission denied', str(fp))
        return real_open(fp, *args, **kw)

    def save_failing(out, rgb):
        if 'nowrite' in out:
            raise OSError(28, 'No space left on device')
        real_save(out, rgb)

    monkeypatch.setattr(Image, 'open', open_locked)
    monkeypatch.setattr('nn.sentiment_map.save_png', save_failing)
    status, out, err = _run(imgs + ['--weights', path, '--map'])
    assert status == 1
    # the unreadable image gives no result; the one whose map failed still has its own
    results = out.splitlines()
    assert len(results) == 2 and results[0].startswith(f'{imgs[1]}: ') and 'map=' in results[0]
    assert results[1].startswith(f'{imgs[2]}: ') and 'map=' not in results[1]
    lines = err.splitlines()
    assert len(lines) == 2
    assert imgs[0] in lines[0] and 'Permission denied' in lines[0]
    assert imgs[2] in lines[1] and 'cannot write its map' in lines[1]
    assert os.path.exists(tmp_path / 'ok_map.png')
    assert not os.path.exists(tmp_path / 'nowrite_map.png')


# ------------------------------------------------------------------------------ weights


def test_missing_weights_named(tmp_path, monkeypatch):
    img = _save(tmp_path / 'x.png', _make_image(18, 230, 230))
    status, out, err = _run([img, '--weights', tmp_path / 'nope.h5'])
    assert status == 2 and out == ''
    assert err.strip() == f"predict.py: error: {tmp_path / 'nope.h5'}: no such weight file"
    # The default file, relative to the repository: the message names it and lists others.
    (tmp_path / 'weights').mkdir()
    (tmp_path / 'weights' / 'twitter_five_fold2.h5').write_bytes(b'')
    monkeypatch.setattr(predict, 'ROOT', str(tmp_path))
    status, _, err = _run([img])
    assert status == 2 and str(tmp_path / 'weights' / 'twitter.h5') in err
    assert 'twitter_five_fold2.h5' in err and '--weights' in err


def _tiny_params(layers, shape=(2, 3)):
    return {name: {'weight': np.ones(shape, np.float32), 'bias': np.ones(shape[0], np.float32)}
            for name in layers}


@pytest.mark.parametrize('case,expected', [
    ('not_hdf5', 'not an HDF5 file'),
    ('missing_layers', "layers ['conv3', 'conv4', 'conv5', 'fc6', 'fc7'] are missing"),
    ('wrong_shape', "layer 'conv1' weight has shape (2, 3), but the network expects "
                    "(96, 3, 11, 11)"),
    ('architecture', "architecture is 'VGG16', expected 'CaffeNet'"),
    ('num_classes', "says num_classes=3"),
    ('empty', 'holds no layers'),
])
def test_wrong_weights_named(tmp_path, case, expected):
    bad = str(tmp_path / f'{case}.h5')
    trunk = list(TRUNK_LAYERS) + ['fc8_twitter']
    attrs = dict(architecture='CaffeNet', num_classes=2, class_names=CLASSES)
    if case == 'not_hdf5':
        open(bad, 'wb').write(b'\x00' * 100)
    elif case == 'missing_layers':
        save_weights(bad, _tiny_params(['conv1', 'conv2', 'fc8_twitter']), **attrs)
    elif case == 'wrong_shape':
        save_weights(bad, _tiny_params(trunk), **attrs)
    elif case == 'architecture':
        save_weights(bad, _tiny_params(trunk), **dict(attrs, architecture='VGG16'))
    elif case == 'num_classes':   # (save_weights refuses this contradiction: set by hand)
        save_weights(bad, _tiny_params(trunk), **attrs)
        with h5py.File(bad, 'a') as f:
            f.attrs['num_classes'] = 3
    else:                                   # an HDF5 file without a single layer
        h5py.File(bad, 'w').close()
    img = _save(tmp_path / 'x.png', _make_image(19, 230, 230))
    status, out, err = _run([img, '--weights', bad, '--map'])
    assert status == 2 and out == ''
    assert err.startswith(f'predict.py: error: {bad}: ') and expected in err
    assert err.count('\n') == 1


def test_usage_errors_exit_2(tmp_path, capsys):
    for argv, message in (
            (['x.png', '--save-npy'], '--save-npy needs --map'),
            (['x.png', '--map-style', 'smooth'], '--map-style needs --map'),
            (['x.png', '--map', '--map-size', '226'], 'at least 227'),
            (['x.png', '--map', '--map-size', '4097'], 'at most 4096'),
            (['x.png', '--batch-size', '0'], '--batch-size'),
            (['x.png', '--device', 'tpu'], 'tpu')):
        with pytest.raises(SystemExit) as exc:
            predict.main(argv, out=io.StringIO(), err=io.StringIO())
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_unwritable_out_folder_is_named(tmp_path, weights):
    path, _ = weights
    img = _save(tmp_path / 'f.png', _make_image(8, 240, 240))
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    status, out, err = _run([img, '--weights', path, '--map', '--out', blocker / 'maps'])
    assert status == 2 and out == ''
    assert err.startswith(f"predict.py: error: --out {blocker / 'maps'}: cannot create")


class _Stream(io.StringIO):
    """stdout whose writes fail with `error` once `lines` lines were written."""

    def __init__(self, error, lines=0):
        super().__init__()
        self.error, self.lines = error, lines

    def write(self, text):
        if self.getvalue().count('\n') >= self.lines:
            raise self.error
        return super().write(text)


@pytest.mark.parametrize('error, status, message', [
    (BrokenPipeError(32, 'Broken pipe'), 1, ''),          # `| head -1`: stop quietly
    (OSError(28, 'No space left on device'), 1,
     'predict.py: error: cannot write the results: [Errno 28] No space left on device\n')])
def test_output_that_cannot_be_written(tmp_path, weights, error, status, message):
    path, _ = weights
    imgs = [_save(tmp_path / f'{i}.png', _make_image(30 + i, 230, 240)) for i in range(3)]
    out, err = _Stream(error, lines=1), io.StringIO()
    assert predict.main(imgs + ['--weights', path, '--batch-size', '1'], out=out,
                        err=err) == status
    assert out.getvalue().startswith(f'{imgs[0]}: ') and err.getvalue() == message


def test_ctrl_c_stops_with_130(tmp_path, weights, monkeypatch):
    path, _ = weights
    img = _save(tmp_path / 'f.png', _make_image(8, 240, 240))

    def interrupted(model, items):
        raise KeyboardInterrupt
    monkeypatch.setattr(predict, 'run_batch', interrupted)
    status, out, err = _run([img, '--weights', path])
    assert status == 130 and out == '' and err == 'predict.py: interrupted\n'
    # also while the model loads (an emulator build can take seconds)
    monkeypatch.setattr(predict, 'load_model', lambda *a: interrupted(None, None))
    assert _run([img, '--weights', path]) == (130, '', 'predict.py: interrupted\n')


def test_a_map_whose_npy_fails_leaves_no_png(tmp_path, weights, monkeypatch):
    path, _ = weights
    img = _save(tmp_path / 'f.png', _make_image(8, 240, 240))

    def full_disk(out, array):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr('nn.sentiment_map.save_npy', full_disk)
    status, out, err = _run([img, '--weights', path, '--map', '--save-npy'])
    assert status == 1 and out.startswith(f'{img}: ') and 'cannot write its map' in err
    assert os.listdir(tmp_path) == ['f.png']   # no f_map.png left behind


def test_subprocess_exit_status(tmp_path, weights):
    path, _ = weights
    good = _save(tmp_path / 'ok.png', _make_image(20, 231, 229))
    missing = str(tmp_path / 'gone.jpg')
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'predict.py'), good, missing,
                          '--weights', path, '--device', 'cpu'],
                         capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert run.returncode == 1
    assert run.stdout.startswith(f'{good}: ') and run.stdout.count('\n') == 1
    assert run.stderr == f'predict.py: error: {missing}: no such file or folder\n'


# ------------------------------------------------------- review additions (mutation round 4)


def test_folder_discovery_skips_hidden_files_and_subfolders_and_names_empty_folders(
        tmp_path, weights):
    path, _ = weights
    folder, empty = tmp_path / 'photos', tmp_path / 'empty'
    folder.mkdir()
    empty.mkdir()
    (empty / 'notes.txt').write_text('no image here')
    img = _save(folder / 'a.png', _make_image(40, 233, 241))
    _save(folder / '.hidden.jpg', _make_image(41, 233, 241))     # e.g. a macOS sidecar
    (folder / 'sub.jpg').mkdir()                                 # a folder named like an image
    status, records, err = _json_records([empty, folder, '--weights', path, '--map'])
    assert status == 1
    assert [r['file'] for r in records] == [str(empty), img]
    assert 'error' in records[0] and 'no image files' in records[0]['error']
    assert err.count('\n') == 1 and str(empty) in err
    # Without --save-npy only the PNG is written.
    assert sorted(os.listdir(folder)) == ['.hidden.jpg', 'a.png', 'a_map.png', 'sub.jpg']
    assert 'npy' not in records[1]


def test_an_existing_npy_is_not_overwritten_without_force(tmp_path, weights):
    path, _ = weights
    img = _save(tmp_path / 'g.png', _make_image(42, 240, 240))
    npy = tmp_path / 'g_map.npy'
    npy.write_bytes(b'precious')
    status, out, err = _run([img, '--weights', path, '--map', '--save-npy'])
    assert status == 1 and str(npy) in err and '--force' in err
    assert npy.read_bytes() == b'precious' and not (tmp_path / 'g_map.png').exists()
    status, _, _ = _run([img, '--weights', path, '--map', '--save-npy', '--force'])
    assert status == 0 and np.load(npy).shape == (2, 8, 8)


def test_weights_with_another_mean_and_a_replaced_file(tmp_path, weights):
    """A file trained with another mean_bgr gets inputs minus that mean; a weight file
    changed in place is read again (not the cached network of the old contents)."""
    import shutil
    path, net = weights
    rgb = _make_image(43, 260, 244)
    img = _save(tmp_path / 'h.png', rgb)
    copy = str(tmp_path / 'copy.h5')
    shutil.copyfile(path, copy)
    _, (before,), _ = _json_records([img, '--weights', copy])
    np.testing.assert_allclose([before['probs'][c] for c in CLASSES],
                               net.predict(_crop_by_hand(rgb)[None])[0], rtol=1e-5, atol=1e-7)
    delta = np.random.default_rng().uniform(-40, 40, 3)
    delta += 10 * np.sign(delta)                              # at least 10 levels per channel
    with h5py.File(copy, 'a') as f:
        f.attrs['mean_bgr'] = np.asarray(MEAN_BGR, dtype=np.float64) + delta
    status, (after,), err = _json_records([img, '--weights', copy])
    assert status == 0, err
    # The network expects pixels minus its own mean: (x - MEAN_BGR) - delta.
    x = _crop_by_hand(rgb) - delta.astype(np.float32)[:, None, None]
    expected = net.predict(x[None])[0]
    got = [after['probs'][c] for c in CLASSES]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert abs(got[1] - before['probs']['positive']) > 1e-4   # the mean did matter


def test_argument_limits_and_combinations(tmp_path, capsys):
    parser = predict.build_parser()
    args = parser.parse_args(['x.png', '--map', '--map-size', str(predict.MAX_MAP_SIZE)])
    predict.check_args(parser, args)                          # the largest size is allowed
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    for argv, message in ((['x.png', '--out', tmp_path / 'maps'], '--out needs --map'),
                          (['x.png', '--map', '--out', blocker], 'exists and is not a folder')):
        with pytest.raises(SystemExit) as exc:                # refused before any weights
            predict.main([str(a) for a in argv] + ['--weights', str(tmp_path / 'none.h5')],
                         out=io.StringIO(), err=io.StringIO())
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / 'maps').exists()


def test_text_line_of_five_classes_keeps_their_order():
    probs = {f'class{i}': p for i, p in enumerate([0.1, 0.3, 0.05, 0.4, 0.15])}
    line = predict.text_line({'file': 'y.jpg', 'label': 'class3', 'probs': probs})
    assert line == ('y.jpg: class3  p(class0)=0.1000  p(class1)=0.3000  p(class2)=0.0500  '
                    'p(class3)=0.4000  p(class4)=0.1500')


def test_map_pixel_budget_runs_a_batch_early(tmp_path, weights, monkeypatch):
    path, _ = weights
    sizes = [(240, 230), (250, 231), (229, 260)]
    imgs = [_save(tmp_path / f'{i}.png', _make_image(50 + i, w, h))
            for i, (w, h) in enumerate(sizes)]
    batches = []
    real = predict.run_batch

    def spy(model, items):
        batches.append([os.path.basename(item.path) for item in items])
        return real(model, items)
    monkeypatch.setattr(predict, 'run_batch', spy)
    # Room for the pixels of two images: the batch of 8 is run once they are reached.
    monkeypatch.setattr(predict, 'MAP_PIXEL_BUDGET', 240 * 230 + 250 * 231)
    status, out, err = _run(imgs + ['--weights', path, '--map', '--out', tmp_path / 'm'])
    assert status == 0, err
    assert batches == [['0.png', '1.png'], ['2.png']] and out.count('\n') == 3


def test_map_of_a_network_that_is_not_about_sentiment_is_refused(tmp_path, monkeypatch):
    img = _save(tmp_path / 'x.png', _make_image(18, 230, 230))
    model = predict.Model(None, ['cat', 'dog', 'bird'], np.zeros((3, 1, 1), np.float32))
    monkeypatch.setattr(predict, 'load_model', lambda path, device: model)
    status, out, err = _run([img, '--weights', tmp_path / 'any.h5', '--map'])
    assert status == 2 and out == '' and err.count('\n') == 1
    assert err.startswith('predict.py: error: --map: ') and "'cat', 'dog', 'bird'" in err
    assert os.listdir(tmp_path) == ['x.png']


def test_the_same_image_by_two_names_is_mapped_once(tmp_path, weights, monkeypatch):
    path, _ = weights
    img = _save(tmp_path / 'k.png', _make_image(44, 235, 240))
    monkeypatch.chdir(tmp_path)
    status, out, err = _run([img, 'k.png', '--weights', path, '--map', '--out', 'maps'])
    assert status == 1 and out.count('\n') == 2
    assert err == 'predict.py: error: k.png: given twice; its map is written once\n'
