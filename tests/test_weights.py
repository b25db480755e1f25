"""Pretrained weights: torchvision .safetensors and Keras .h5 files written here with the
real key names (nothing downloads), converted and checked against PyTorch and by hand."""

import h5py
import numpy as np
import pytest
from safetensors.numpy import save_file

from zfjax.nets import model, network, preprocessing, weights
from helpers import write_keras3

VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# torchvision.models.vgg's cfgs "A", "B", "D", "E" (vgg11, vgg13, vgg16, vgg19)
VGG_CFGS = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
            13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
            16: VGG_CFG,
            19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                 512, 512, 512, 512, "M"]}


def torchvision_alexnet(nn, width=1.0, classes=1000):
    """torchvision.models.AlexNet, written out (torchvision is not a dependency)."""
    c = [max(1, round(f * width)) for f in (64, 192, 384, 256, 256)]
    h = round(4096 * width)
    net = nn.Module()
    net.features = nn.Sequential(
        nn.Conv2d(3, c[0], 11, 4, 2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(True), nn.MaxPool2d(3, 2),
        nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(True),
        nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(True),
        nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(True), nn.MaxPool2d(3, 2))
    net.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    net.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(c[4] * 36, h), nn.ReLU(True), nn.Dropout(), nn.Linear(h, h),
        nn.ReLU(True), nn.Linear(h, classes))
    return net


def torchvision_vgg16(nn, width=1.0, classes=1000):
    """torchvision.models.vgg16 (no batch norm), written out."""
    return torchvision_vgg(nn, 16, False, width, classes)


def torchvision_vgg(nn, depth, batch_norm, width=1.0, classes=1000):
    """torchvision.models.vgg{depth}[_bn], written out (torchvision's make_layers)."""
    layers, cin = [], 3
    for v in VGG_CFGS[depth]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            cout = round(v * width)
            layers.append(nn.Conv2d(cin, cout, 3, padding=1))
            layers += [nn.BatchNorm2d(cout), nn.ReLU(True)] if batch_norm else [nn.ReLU(True)]
            cin = cout
    h = round(4096 * width)
    net = nn.Module()
    net.features = nn.Sequential(*layers)
    net.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    net.classifier = nn.Sequential(
        nn.Linear(cin * 49, h), nn.ReLU(True), nn.Dropout(), nn.Linear(h, h), nn.ReLU(True),
        nn.Dropout(), nn.Linear(h, classes))
    return net


def run_torch(torch, net, x_nhwc):
    net.eval()
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
        return net.classifier(torch.flatten(net.avgpool(net.features(x)), 1)).numpy()


def state_dict(net):
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("arch, build", [("alexnet", torchvision_alexnet), ("vgg16", torchvision_vgg16)])
def test_full_size_key_table_equals_torchvision(arch, build):
    torch = pytest.importorskip("torch")
    with torch.device("meta"):  # shapes only, no memory
        net = build(torch.nn)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert weights.torchvision_shapes(network.Network(arch=arch)) == want


@pytest.mark.parametrize("depth", sorted(VGG_CFGS))
@pytest.mark.parametrize("batch_norm", [False, True], ids=["", "bn"])
def test_full_size_vgg_key_tables_equal_torchvision(depth, batch_norm):
    """vgg11 ... vgg19_bn: every key and shape of torchvision's state dict (vgg19_bn:
    conv at features.0, 3, 7, ... with its batch norm at the next index)."""
    torch = pytest.importorskip("torch")
    with torch.device("meta"):
        net = torchvision_vgg(torch.nn, depth, batch_norm)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}
    arch = f"vgg{depth}" + ("_bn" if batch_norm else "")
    assert weights.torchvision_shapes(network.Network(arch=arch)) == want
    torch_count = sum(p.numel() for p in net.parameters())
    assert network.parameter_count(network.Network(arch=arch)) == torch_count


def test_vgg19_bn_keys_by_hand():
    keys = weights.torchvision_keys(network.Network(arch="vgg19_bn"))
    assert keys["conv1_1"] == ("features.0.weight", "features.0.bias")
    assert keys["bn1_1"] == ("features.1.weight", "features.1.bias", "features.1.running_mean",
                             "features.1.running_var")
    assert keys["conv1_2"][0] == "features.3.weight" and keys["bn1_2"][0] == "features.4.weight"
    assert keys["conv2_1"][0] == "features.7.weight"  # after ReLU 5, pool 6
    assert keys["conv5_4"][0] == "features.49.weight" and keys["bn5_4"][0] == "features.50.weight"
    assert keys["fc6"][0] == "classifier.0.weight" and keys["fc8"][0] == "classifier.6.weight"


def test_converted_vgg_bn_forward_equals_pytorch_in_eval_mode(tmp_path):
    """vgg11_bn at width 1/16 with random running statistics: torchvision's key names,
    ours == PyTorch's eval forward."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torchvision_vgg(torch.nn, 11, True, 0.0625, classes=7)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
    path = tmp_path / "vgg11_bn.safetensors"
    save_file(state_dict(net), str(path))  # with num_batches_tracked, as torchvision saves it
    loaded = weights.load(path, "vgg11_bn")
    assert loaded.config == network.Network(arch="vgg11_bn", num_classes=7, width=0.0625,
                                          init_std=None)
    x = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    ours, _ = model.forward_jit(loaded.config, loaded.params, x)
    ref = run_torch(torch, net, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("arch, build, width", [("alexnet", torchvision_alexnet, 0.25),
                                                ("vgg16", torchvision_vgg16, 0.0625)])
def test_converted_forward_equals_pytorch(tmp_path, arch, build, width):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = build(torch.nn, width, classes=7)
    for name, p in net.named_parameters():  # biases non-zero, so their mapping is checked too
        if name.endswith("bias"):
            torch.nn.init.normal_(p, 0, 0.05)
    path = tmp_path / f"{arch}.safetensors"
    save_file(state_dict(net), str(path))

    loaded = weights.load(path, arch)
    assert loaded.config == network.Network(arch=arch, num_classes=7, width=width, init_std=None)
    assert loaded.preprocessing is preprocessing.TORCHVISION
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    ours, _ = model.forward_jit(loaded.config, loaded.params, x)
    ref = run_torch(torch, net, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

    # The same weights as a Keras file, in both HDF5 layouts, give the same network.
    if arch == "vgg16":
        layers = keras_layers(state_dict(net))
        for writer in (write_keras_legacy, write_keras3):
            keras_path = writer(tmp_path, layers)
            from_keras = weights.load(keras_path, "vgg16")
            assert from_keras.config == loaded.config
            assert from_keras.preprocessing is preprocessing.CAFFE
            got, _ = model.forward_jit(from_keras.config, from_keras.params, x)
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def keras_layers(sd):
    """Keras applications names -> [kernel, bias] from a torchvision VGG16 state dict."""
    convs = [k[:-len(".weight")] for k in sd if k.startswith("features") and k.endswith("weight")]
    names, block, i = [], 1, 0
    for key in convs:
        index = int(key.split(".")[1])
        pools_before = sum(1 for j, v in enumerate(_vgg_stage_kinds()) if v == "M" and j < index)
        if pools_before + 1 != block:
            block, i = pools_before + 1, 0
        i += 1
        names.append(f"block{block}_conv{i}")
    out = {n: [sd[k + ".weight"].transpose(2, 3, 1, 0), sd[k + ".bias"]] for n, k in zip(names, convs)}
    w = sd["classifier.0.weight"]  # (out, C*7*7) in C, y, x order -> rows in y, x, C order
    c = w.shape[1] // 49
    fc1 = np.empty((w.shape[1], w.shape[0]), np.float32)
    for y in range(7):
        for x in range(7):
            for ch in range(c):
                fc1[(y * 7 + x) * c + ch] = w[:, ch * 49 + y * 7 + x]
    out["fc1"] = [fc1, sd["classifier.0.bias"]]
    out["fc2"] = [sd["classifier.3.weight"].T, sd["classifier.3.bias"]]
    out["predictions"] = [sd["classifier.6.weight"].T, sd["classifier.6.bias"]]
    return out


def _vgg_stage_kinds():
    """torchvision's features indices: conv, relu per number, 'M' per pool."""
    kinds = []
    for v in VGG_CFG:
        kinds += ["M"] if v == "M" else ["C", "R"]
    return kinds


def write_keras_legacy(tmp_path, layers):
    """The layout of keras-applications' vgg16_weights_tf_dim_ordering_tf_kernels.h5."""
    path = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    names = ["input_1"] + [n for n in layers if n.startswith("block")] + ["flatten", "fc1", "fc2",
                                                                          "predictions"]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in names]
        for n in names:
            g = f.create_group(n)
            wn = [f"{n}/kernel:0", f"{n}/bias:0"] if n in layers else []
            g.attrs["weight_names"] = [w.encode() for w in wn]
            for w, a in zip(wn, layers.get(n, [])):
                g.create_dataset(w, data=a)
    return path


def small_vgg_state_dict(width=0.0625, classes=3):
    """A torchvision-layout VGG16 state dict of zeros (real key names, scaled shapes)."""
    config = network.Network(arch="vgg16", num_classes=classes, width=width)
    return {k: np.zeros(s, np.float32) for k, s in weights.torchvision_shapes(config).items()}


def test_conversion_by_hand(tmp_path):
    """One conv weight OIHW -> HWIO, one fc6 weight from (C, y, x) to (y, x, C) order."""
    sd = small_vgg_state_dict()
    sd["features.0.weight"][1, 2, 0, 2] = 1.0  # out 1, in 2, row 0, column 2
    c = sd["features.28.weight"].shape[0]  # conv5_3: 32 maps, pool5 is 7x7
    sd["classifier.0.weight"][3, 5 * 49 + 2 * 7 + 4] = 2.0  # out 3 <- map 5 at (y 2, x 4)
    sd["classifier.6.bias"][:] = [0.5, -1, 2]
    save_file(sd, str(tmp_path / "v.safetensors"))
    params = weights.load(tmp_path / "v.safetensors", "vgg16").params
    kernel = params["conv1_1"]["kernel"]
    assert kernel.shape == (3, 3, 3, 4) and kernel[0, 2, 2, 1] == 1.0 and kernel.sum() == 1.0
    fc6 = params["fc6"]["kernel"]
    assert fc6.shape == (49 * c, 256) and fc6[(2 * 7 + 4) * c + 5, 3] == 2.0 and fc6.sum() == 2.0
    # With every weight zero the logits are fc8's bias.
    loaded = weights.load(tmp_path / "v.safetensors", "vgg16")
    logits, _ = model.forward_jit(loaded.config, loaded.params, np.ones((1, 224, 224, 3), np.float32))
    np.testing.assert_array_equal(logits, [[0.5, -1, 2]])


def test_preprocessing_by_hand():
    pixel = np.array([[[[10, 20, 30]]]], np.uint8)  # one RGB pixel, 1x1 image
    tv = preprocessing.TORCHVISION(pixel, 1)
    np.testing.assert_allclose(tv[0, 0, 0], [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224,
                                             (30 / 255 - 0.406) / 0.225], rtol=1e-6)
    caffe = preprocessing.CAFFE(pixel, 1)
    np.testing.assert_allclose(caffe[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    for p in (preprocessing.TORCHVISION, preprocessing.CAFFE):
        np.testing.assert_array_equal(p.to_pixels(p(pixel, 1)), pixel)
        lower, upper = p.pixel_bounds(1)
        np.testing.assert_array_equal(p.to_pixels(lower[None, None, None]), [[[[0, 0, 0]]]])
        np.testing.assert_array_equal(p.to_pixels(upper[None, None, None]), [[[[255, 255, 255]]]])


def test_a_file_of_another_architecture_gets_one_line(tmp_path):
    sd = small_vgg_state_dict()
    save_file(sd, str(tmp_path / "vgg.safetensors"))
    with pytest.raises(ValueError) as err:
        weights.load(tmp_path / "vgg.safetensors", "alexnet")
    assert str(err.value) == ("vgg.safetensors does not hold alexnet weights: features.0.weight has "
                              "shape (4, 3, 3, 3) but alexnet expects (4, 3, 11, 11)")
    del sd["features.28.bias"]
    save_file(sd, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match=r"^cut.safetensors does not hold vgg16 weights: missing "
                                         r"key features.28.bias$"):
        weights.load(tmp_path / "cut.safetensors", "vgg16")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match=r"^junk.safetensors is not a readable .safetensors file"):
        weights.load(tmp_path / "junk.safetensors", "vgg16")
    with pytest.raises(ValueError, match="Keras applications weights exist for vgg16, not alexnet"):
        weights.load(write_keras3(tmp_path, {}), "alexnet")
    with pytest.raises(ValueError, match="^vgg16.weights.h5 does not hold vgg16 weights: missing "
                                         "key block1_conv1/0$"):
        weights.load(tmp_path / "vgg16.weights.h5", "vgg16")
    with pytest.raises(FileNotFoundError, match="weight file .*none.h5 not found"):
        weights.load(tmp_path / "none.h5", "vgg16")


def test_zfnet_layout_round_trips_through_torchvision_keys():
    config = network.Network(num_classes=4, image_size=224, width=0.25)
    keys = weights.torchvision_keys(config)
    # conv, relu, pool, lrn per block: conv2 is features.4; the classifier starts after flatten.
    assert keys["conv2"] == ("features.4.weight", "features.4.bias")
    assert keys["fc6"] == ("classifier.0.weight", "classifier.0.bias")
    assert set(weights.torchvision_shapes(config)) == {k for pair in keys.values() for k in pair}
    assert network.parameter_count(config) == sum(
        int(np.prod(s)) for s in weights.torchvision_shapes(config).values())


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_visualize_runs_the_two_vgg16_systems_on_a_weight_file(tmp_path, run_cli):
    """reconstructions (whole map and strongest pixel after pool1..pool5) and maximize
    (conv5_3 channels) from --arch vgg16 --weights, with no run folder."""
    from PIL import Image

    config = network.Network(arch="vgg16", num_classes=1000, width=0.0625)
    rng = np.random.default_rng(0)
    save_file({k: (rng.normal(size=s) * np.sqrt(2 / np.prod(s[1:]))).astype(np.float32)
               if len(s) > 1 else np.zeros(s, np.float32)
               for k, s in weights.torchvision_shapes(config).items()}, str(tmp_path / "vgg16.safetensors"))
    Image.fromarray(rng.integers(0, 256, (240, 300, 3), np.uint8)).save(tmp_path / "cat.jpg")
    w = ["--arch", "vgg16", "--weights", str(tmp_path / "vgg16.safetensors")]
    code, out, err = run_cli(["reconstructions", *w, "--images", str(tmp_path / "cat.jpg")])
    assert code == 0, err
    figures = tmp_path / "figures"
    assert out.split() == [str(figures / "reconstructions.npz"), str(figures / "reconstructions.png")]
    arrays = np.load(figures / "reconstructions.npz")
    assert list(arrays["layers"]) == ["pool1", "pool2", "pool3", "pool4", "pool5"]
    assert arrays["whole"].shape == arrays["strongest"].shape == (1, 5, 224, 224, 3)
    code, out, err = run_cli(["maximize", *w, "--layer", "conv5_3", "--units", "0", "1", "2",
                              "--steps", "2", "--out", str(tmp_path / "m")])
    assert code == 0, err
    assert np.load(tmp_path / "m" / "maximize_conv5_3.npz")["images"].shape == (3, 224, 224, 3)
    code, out, err = run_cli(["reconstructions", "--weights", str(tmp_path / "vgg16.safetensors"),
                              "--images", str(tmp_path / "cat.jpg")])
    assert (code, err) == (2, "visualize.py reconstructions: error: --weights needs --arch "
                              f"(one of {', '.join(network.ARCHITECTURES)})\n")


@pytest.mark.parametrize("bad, message", [
    (np.nan, r"tensor features.0.weight holds 1 non-finite value\(s\) \(NaN or Inf\)"),
    (np.inf, r"tensor features.0.weight holds 1 non-finite value\(s\) \(NaN or Inf\)"),
    ("int8", "tensor features.0.weight holds int8 values, not floating point"),
    ("int64", "tensor features.0.weight holds int64 values, not floating point"),
    ("bool", "tensor features.0.weight holds bool values, not floating point"),
])
def test_non_finite_or_non_float_weights_are_refused_naming_the_tensor(tmp_path, bad, message):
    sd = small_vgg_state_dict()
    if isinstance(bad, str):
        sd["features.0.weight"] = sd["features.0.weight"].astype(bad)
    else:
        sd["features.0.weight"][0, 0, 0, 0] = bad
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=rf"^bad.safetensors: {message}"):
        weights.load(tmp_path / "bad.safetensors", "vgg16")


def test_keras_files_with_bad_values_or_a_broken_layout_are_refused_naming_the_file(tmp_path):
    layers = keras_layers(small_vgg_state_dict())
    layers["fc2"][1] = np.full_like(layers["fc2"][1], np.nan)
    with pytest.raises(ValueError, match=r"^vgg16.weights.h5: tensor fc2/1 holds \d+ non-finite"):
        weights.load(write_keras3(tmp_path, layers), "vgg16")
    layers = keras_layers(small_vgg_state_dict())
    layers["block1_conv1"][0] = layers["block1_conv1"][0].astype(np.int64)
    with pytest.raises(ValueError, match=r"^vgg16_weights_tf_dim_ordering_tf_kernels.h5: tensor "
                                         r"block1_conv1/0 holds int64 values"):
        weights.load(write_keras_legacy(tmp_path, layers), "vgg16")
    with h5py.File(tmp_path / "broken.h5", "w") as f:  # names a layer group it lacks
        f.attrs["layer_names"] = [b"block1_conv1"]
    with pytest.raises(ValueError, match=r"^broken.h5 is not a readable Keras weight file: KeyError"):
        weights.load(tmp_path / "broken.h5", "vgg16")


def test_pretrained_imagenet_weights_take_a_folder_of_named_classes(tmp_path, caplog):
    """--weights with --data FOLDER: classes named by WordNet id or ImageNet name get their
    ImageNet label; a folder with other classes is analysed without labels (not refused)."""
    import argparse
    import logging

    from helpers import write_image_folder
    from zfjax import cli, loading

    info = {"weights": str(tmp_path / "vgg16.safetensors"), "run_dir": None,
            "class_names": loading.imagenet_classes()}
    config = network.Network(arch="vgg16", num_classes=1000, width=0.0625)

    def load(classes):
        folder = write_image_folder(tmp_path / "_".join(classes), classes, 1, splits=("val",),
                                    shape=(40, 40))
        args = argparse.Namespace(images=None, data=str(folder), split="val", data_dir=None,
                                  target=None)
        return cli.load_stored_images(args, config, info, None)

    stored, labels, names = load(["Golden_Retriever", "goldfish", "n01440764"])
    assert stored.shape == (3, 256, 256, 3)
    assert labels.tolist() == [207, 1, 0] and names[0] == "Golden_Retriever/0.png"
    with caplog.at_level(logging.WARNING):
        stored, labels, _ = load(["cat", "goldfish"])
    assert len(stored) == 2 and labels is None
    assert "class 'cat' (of 1) is not one of the weights' 1000 classes" in caplog.text


@pytest.mark.slow  # end to end; -m 'not slow' skips it, CI runs it
def test_every_weight_file_figure_runs_on_a_vgg_bn_file(tmp_path, run_cli):
    """topk, occlusion, filters, invariance, reconstructions, maximize and correspondence
    from --arch vgg11_bn --weights (torchvision's key names, width 1/16, random weights
    and running statistics) on one image. Costly (about a minute: each command compiles
    its own 224 px programs); vgg11_bn is the smallest network with batch norm."""
    import json
    from PIL import Image

    config = network.Network(arch="vgg11_bn", num_classes=1000, width=0.0625)
    rng = np.random.default_rng(0)
    tensors = {}
    for key, s in weights.torchvision_shapes(config).items():
        if key.endswith("running_var"):
            tensors[key] = rng.uniform(0.5, 2, s).astype(np.float32)
        elif len(s) > 1:
            tensors[key] = (rng.normal(size=s) * np.sqrt(2 / np.prod(s[1:]))).astype(np.float32)
        else:
            tensors[key] = rng.normal(0, 0.1, s).astype(np.float32)
    tensors["features.1.num_batches_tracked"] = np.array(7, np.int64)  # as torchvision saves it
    path = tmp_path / "vgg11_bn.safetensors"
    save_file(tensors, str(path))
    image, other = tmp_path / "cat.jpg", tmp_path / "dog.jpg"
    Image.fromarray(rng.integers(0, 256, (240, 300, 3), np.uint8)).save(image)
    Image.fromarray(rng.integers(0, 256, (240, 300, 3), np.uint8)).save(other)
    (tmp_path / "parts.json").write_text(json.dumps({"images": [  # correspondence needs 2
        {"path": str(path_), "parts": {"eye": [40, 100, 80, 140]}} for path_ in (image, other)]}))
    w = ["--arch", "vgg11_bn", "--weights", str(path)]
    commands = {
        "correspondence": ["--parts", str(tmp_path / "parts.json"), "--draws", "1"],
        "topk": ["--images", str(image), "--layers", "conv5_2", "pool5", "--count", "2",
                 "--top", "1"],
        "occlusion": ["--images", str(image), "--layer", "conv5_2", "--size", "112",
                      "--stride", "112"],
        "filters": ["--images", str(image), "--maps", "2"],
        "invariance": ["--images", str(image), "--translations", "0", "8", "--scales", "1",
                       "--rotations", "0"],
        "reconstructions": ["--images", str(image), "--layers", "pool1", "pool5"],
        "maximize": ["--layer", "conv5_2", "--units", "0", "--steps", "2"],
    }
    for command, options in commands.items():
        out = tmp_path / command
        code, printed, err = run_cli([command, *w, *options, "--out", str(out)])
        assert code == 0, (command, err)
        assert any(out.glob("*.png")), command
