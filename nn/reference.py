"""The NumPy op set (`ops`) of docs/design.md: `from nn import reference as ops`."""
from nn.conv import conv_backward, conv_forward
from nn.dropout import dropout_backward, dropout_forward
from nn.inner_product import inner_product_backward, inner_product_forward
from nn.lrn import lrn_backward, lrn_forward
from nn.pool import max_pool_backward, max_pool_forward
from nn.relu import relu_backward, relu_forward
from nn.sgd import sgd_update
from nn.softmax import accuracy, softmax, softmax_loss_backward, softmax_loss_forward

__all__ = [
    "conv_forward", "conv_backward",
    "inner_product_forward", "inner_product_backward",
    "max_pool_forward", "max_pool_backward",
    "lrn_forward", "lrn_backward",
    "relu_forward", "relu_backward",
    "dropout_forward", "dropout_backward",
    "softmax", "softmax_loss_forward", "softmax_loss_backward", "accuracy",
    "sgd_update",
]
