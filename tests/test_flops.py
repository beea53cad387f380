"""Work counts of nn/flops.py against values worked out by hand for CaffeNet."""
import pytest

from nn import flops
from nn.flops import Counts, Layer, caffenet_layers, layer_counts


def _by_name(layers):
    return {l.name: l for l in layers}


def test_shapes_follow_caffenet():
    L = _by_name(caffenet_layers())
    # 227 -> conv1 (k11 s4) 55 -> pool 27 -> conv2 27 -> pool 13 -> conv3..5 13 -> pool 6.
    assert L['conv1'].out_shape == (96, 55, 55)
    assert L['pool1'].out_shape == (96, 27, 27)
    assert L['norm1'].out_shape == (96, 27, 27)
    assert L['conv2'].out_shape == (256, 27, 27)
    assert L['pool2'].out_shape == (256, 13, 13)
    assert L['conv5'].out_shape == (256, 13, 13)
    assert L['pool5'].out_shape == (256, 6, 6)
    assert L['fc6'].in_shape == (9216,)
    assert L['fc8'].out_shape == (1000,)
    names = [l.name for l in caffenet_layers(num_classes=2, last_layer='fc8_twitter')]
    assert names.index('pool1') < names.index('norm1')  # CaffeNet pools before LRN
    assert names[-2] == 'fc8_twitter'


def test_macs_by_hand():
    L = _by_name(caffenet_layers())
    assert layer_counts(L['conv1'], 1)['forward'].macs == 96 * 3 * 11 * 11 * 55 * 55 == 105_415_200
    # Groups halve the input channels each filter sees.
    assert layer_counts(L['conv2'], 1)['forward'].macs == 256 * 48 * 5 * 5 * 27 * 27 == 223_948_800
    assert layer_counts(L['conv4'], 1)['forward'].macs == 384 * 192 * 3 * 3 * 13 * 13
    assert layer_counts(L['fc6'], 1)['forward'].macs == 9216 * 4096
    # The famous total: 724.4 million multiply-accumulates per 227x227 image.
    assert flops.forward_macs(caffenet_layers()) == 724_406_816
    assert flops.forward_macs(caffenet_layers(), batch=3) == 3 * 724_406_816


def test_products_flops_and_bytes_by_hand():
    fc6 = _by_name(caffenet_layers())['fc6']
    n = 5
    c = layer_counts(fc6, n)
    macs = n * 9216 * 4096
    assert c['forward'] == Counts(macs, 2 * macs + n * 4096,
                                  4 * (n * 9216 + 4096 * 9216 + 4096 + n * 4096))
    assert c['backward_data'] == Counts(macs, 2 * macs, 4 * (n * 4096 + 4096 * 9216 + n * 9216))
    assert c['backward_weights'] == Counts(macs, 2 * macs + n * 4096,
                                           4 * (n * 9216 + n * 4096 + 4096 * 9216 + 4096))
    conv3 = _by_name(caffenet_layers())['conv3']
    f = layer_counts(conv3, 2)['forward']
    assert f.bytes == 4 * (2 * 256 * 13 * 13 + 384 * 256 * 9 + 384 + 2 * 384 * 13 * 13)


def test_pool_rule_and_clipped_windows():
    # Caffe's ceil rule, and the pad correction when the last window would start in the pad.
    assert flops.pool_out_size(55, 3, 2, 0) == 27
    assert flops.pool_out_size(13, 3, 2, 0) == 6
    assert flops.pool_out_size(4, 2, 2, 1) == 3   # ceil(4/2)+1 = 3, (3-1)*2 = 4 < 5
    assert flops.pool_out_size(5, 2, 2, 1) == 3   # ceil(5/2)+1 = 4, (4-1)*2 = 6 >= 6 -> 3
    # 6 wide, kernel 3 stride 2: 3 outputs, windows [0,3) [2,5) [4,6) -> 3 + 3 + 2 = 8.
    layer = Layer('p', 'pool', (7, 6, 6), (7, 3, 3), {'kernel': 3, 'stride': 2, 'pad': 0})
    c = layer_counts(layer, 2)
    assert c['forward'].flops == 2 * 7 * 8 * 8
    assert c['forward'].bytes == 4 * (2 * 7 * 36 + 2 * 7 * 9) + 4 * 2 * 7 * 9
    assert c['backward'].bytes == 4 * (2 * 7 * 9 + 2 * 7 * 36) + 4 * 2 * 7 * 9
    pool1 = _by_name(caffenet_layers())['pool1']
    assert layer_counts(pool1, 1)['forward'].flops == 96 * (27 * 3) ** 2


def test_elementwise_and_sgd_bytes():
    L = _by_name(caffenet_layers())
    n = 3 * 96 * 55 * 55
    relu1 = layer_counts(L['relu1'], 3)
    assert relu1['forward'].bytes == 4 * 2 * n and relu1['backward'].bytes == 4 * 3 * n
    drop6 = layer_counts(L['drop6'], 3)
    assert drop6['forward'].bytes == 4 * 2 * 3 * 4096
    assert flops.sgd_counts(11) == Counts(0, 77, 4 * 5 * 11)
    # CaffeNet's well-known parameter count with 1000 classes.
    assert flops.param_count(caffenet_layers()) == 60_965_224


def test_network_totals():
    layers = caffenet_layers()
    fwd = flops.network_counts(layers, 2)
    assert fwd.macs == 2 * 724_406_816
    train = flops.network_counts(layers, 2, train=True)
    # Backward does the forward's MACs twice (data and weights), minus conv1's data gradient.
    assert train.macs == 3 * fwd.macs - 2 * 105_415_200
    assert train.bytes > fwd.bytes + flops.sgd_counts(60_965_224).bytes


def test_fc_products_by_hand():
    fc7 = _by_name(caffenet_layers())['fc7']
    prods = flops.fc_products(fc7, 3)
    assert prods == {'forward': (3, 4096, 4096), 'backward_data': (3, 4096, 4096),
                     'backward_weights': (4096, 4096, 3)}
    # (2 x 5) @ (5 x 7): 70 MACs; reads 10 + 35 floats, writes 14.
    assert flops.matmul_counts(2, 7, 5) == Counts(70, 140, 4 * (10 + 35 + 14))
    # The fc layer's forward is its product plus the bias.
    fwd = layer_counts(fc7, 3)['forward']
    assert fwd.macs == flops.matmul_counts(*prods['forward']).macs
    with pytest.raises(ValueError, match='conv1'):
        flops.fc_products(caffenet_layers()[0], 1)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match='batch'):
        layer_counts(caffenet_layers()[0], 0)
    with pytest.raises(ValueError, match='relu1'):
        flops.weight_shape(caffenet_layers()[1])
    with pytest.raises(ValueError, match='kernel 11'):
        caffenet_layers(input_size=8)


def test_tiny_network_totals_by_hand():
    # one fc layer, 4 inputs -> 3 outputs, then the loss; one image
    layers = flops.layers_from_spec([{'type': 'fc', 'name': 'fc1', 'num_output': 3}],
                                    input_size=2, in_channels=1)
    # fc1 forward: 12 MACs, 24 + 3 (bias) FLOPs, x 4 + w 12 + b 3 + y 3 floats;
    # loss forward: 4 x 3 + 1 FLOPs, 3 scores and one int32 label
    assert flops.network_counts(layers, 1) == Counts(12, 27 + 13, 4 * 22 + 4 * 3 + 4)
    # training: + fc1's weight gradient (27 FLOPs, 22 floats), not its data gradient (the
    # input's); + the loss backward (6 x 3 FLOPs, 2 x 3 floats and the label); + SGD on
    # 15 parameters (7 FLOPs and 5 floats each)
    train = flops.network_counts(layers, 1, train=True)
    assert train == Counts(24, 27 + 13 + 27 + 18 + 105,
                           4 * 22 + 16 + 4 * 22 + 28 + 4 * 5 * 15)


def test_lrn_dropout_loss_counts_by_hand():
    L = _by_name(caffenet_layers())
    n = 2 * 96 * 27 * 27
    norm1 = layer_counts(L['norm1'], 2)   # local_size 5
    assert norm1['forward'] == Counts(0, (1 + 5 + 2 + 1 + 1) * n, 4 * 2 * n)
    assert norm1['backward'] == Counts(0, (2 + 5 + 2 + 3) * n, 4 * 3 * n)
    drop7 = layer_counts(L['drop7'], 2)
    assert drop7['backward'] == Counts(0, 2 * 2 * 4096, 4 * 2 * 2 * 4096)
    loss = layer_counts(L['loss'], 2)
    assert loss['forward'] == Counts(0, 4 * 2000 + 2, 4 * 2000 + 4 * 2)
    assert loss['backward'] == Counts(0, 6 * 2000, 4 * 2 * 2000 + 4 * 2)


def test_padded_pool_windows_are_clipped():
    # 5 wide, kernel 3 stride 2 pad 1: windows [-1,2) [1,4) [3,6) hold 2 + 3 + 2 pixels
    layer = Layer('p', 'pool', (4, 5, 5), (4, 3, 3), {'kernel': 3, 'stride': 2, 'pad': 1})
    c = layer_counts(layer, 3)
    assert c['forward'].flops == 3 * 4 * 7 * 7
    assert c['backward'].flops == 3 * 4 * 9   # one gradient routed per output


def test_bad_specs_are_named():
    with pytest.raises(ValueError, match="'conv1': group 2 must divide its 4 input channels "
                                         "and 5 outputs"):
        flops.layers_from_spec([{'type': 'conv', 'name': 'conv1', 'kernel': 1,
                                 'num_output': 5, 'group': 2}], input_size=3, in_channels=4)
    with pytest.raises(ValueError, match="'pool1'.*output map is empty"):
        flops.layers_from_spec([{'type': 'pool', 'name': 'pool1', 'kernel': 3, 'stride': 2}],
                               input_size=1, in_channels=1)
