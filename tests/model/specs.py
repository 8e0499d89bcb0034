"""The seeds' Keras models as spec layer lists (their summaries give the parameter counts)."""

MNIST_CONVNET = """
- {type: conv2d, filters: 32, kernel_size: 3, activation: relu}
- {type: max_pool2d, pool_size: 2}
- {type: conv2d, filters: 64, kernel_size: 3, activation: relu}
- {type: max_pool2d, pool_size: 2}
- {type: conv2d, filters: 64, kernel_size: 3, activation: relu}
- {type: flatten}
- {type: dense, units: 64, activation: relu}
- {type: dense, units: 10, activation: softmax}
"""

CATS_DOGS = """
- {type: conv2d, filters: 32, kernel_size: 3, activation: relu}
- {type: max_pool2d}
- {type: conv2d, filters: 64, kernel_size: 3, activation: relu}
- {type: max_pool2d}
- {type: conv2d, filters: 128, kernel_size: 3, activation: relu}
- {type: max_pool2d}
- {type: conv2d, filters: 128, kernel_size: 3, activation: relu}
- {type: max_pool2d}
- {type: flatten}
- {type: dense, units: 512, activation: relu}
- {type: dense, units: 1, activation: sigmoid}
"""
CATS_DOGS_DATA = "{dataset: cifar10, image_size: 150, classes: {keep: [cat, dog]}}"

FASHION_BN_MLP = """
- {type: flatten}
- {type: batch_norm}
- {type: dense, units: 300, activation: elu, kernel_init: he_normal}
- {type: batch_norm}
- {type: dense, units: 100, activation: elu, kernel_init: he_normal}
- {type: batch_norm}
- {type: dense, units: 10, activation: softmax}
"""

LEAKY_MLP = """
- {type: dense, units: 30, kernel_init: he_normal}
- {type: leaky_relu, alpha: 0.2}
- {type: dense, units: 20, kernel_init: he_normal}
- {type: leaky_relu, alpha: 0.2}
- {type: dense, units: 1}
"""
PRELU_MLP = LEAKY_MLP.replace("{type: leaky_relu, alpha: 0.2}", "{type: prelu}")
SELU_MLP = """
- {type: dense, units: 30, activation: selu, kernel_init: lecun_normal}
- {type: dense, units: 20, activation: selu, kernel_init: lecun_normal}
- {type: dense, units: 1}
"""

VGG_BASE = "- {type: backbone, arch: vgg16, include_top: false}"
VGG_HEAD = (
    VGG_BASE
    + """
- {type: flatten}
- {type: dense, units: 256, activation: relu}
- {type: dense, units: 1, activation: sigmoid}
"""
)
