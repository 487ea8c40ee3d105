"""Built-in models follow timm's feature protocol, with the CIFAR stem on small images; the
toolkit's convolutions that skip taps reading only padding compute what the models' own do."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.model import (NormalizedClassifier, PaddingSkippingConv2d, extract_features, live_taps,
                           skip_padding_taps, whole_map_taps)
from toolkit.plugins import get_registry


@pytest.mark.parametrize("name", ["resnet18", "resnet18-tv"])
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32)])
def test_resnet18_protocol_and_shapes(name, channels, size):
    torch.manual_seed(0)
    model = get_registry("model").get(name).obj(num_classes=7, in_chans=channels, image_size=size)
    x = torch.rand(2, channels, size, size)
    maps = model.forward_features(x)
    assert maps.shape == (2, 512, size // 8, size // 8)  # CIFAR stem: only the 3 stride-2 stages
    assert model.forward_head(maps, pre_logits=True).shape == (2, 512)
    assert model.forward_head(maps).shape == (2, 7)
    assert torch.allclose(model(x), model.forward_head(maps))


def test_small_images_get_the_cifar_stem():
    model = get_registry("model").get("resnet18").obj(num_classes=10, in_chans=3, image_size=32)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    big = get_registry("model").get("resnet18").obj(num_classes=10, in_chans=3, image_size=224)
    assert big.conv1.kernel_size == (7, 7)


def test_normalisation_lives_inside_the_wrapper():
    torch.manual_seed(0)
    net = get_registry("model").get("resnet18").obj(num_classes=3, in_chans=1, image_size=8).eval()
    wrapped = NormalizedClassifier(net, mean=[0.25], std=[0.5]).eval()
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), net((x - 0.25) / 0.5), atol=1e-6)
        want = net.forward_head(net.forward_features((x - 0.25) / 0.5), pre_logits=True)
    assert torch.allclose(extract_features(wrapped, x, batch_size=3), want, atol=1e-6)
    assert set(wrapped.state_dict()) >= {"mean", "std", "model.fc.weight"}


def test_models_without_the_feature_protocol_are_refused():
    with pytest.raises(TypeError, match="timm's feature protocol"):
        NormalizedClassifier(torch.nn.Linear(2, 2), [0.5], [0.5])


# --- Convolutions that skip the kernel taps which read only padding (toolkit.model) ---

def _conv_geometries():
    """Every 1-D geometry of small maps: (size, kernel, stride, padding, dilation)."""
    for size in range(1, 8):
        for kernel in range(1, 6):
            for stride in (1, 2, 3):
                for padding in range(4):
                    for dilation in (1, 2):
                        if size + 2 * padding >= dilation * (kernel - 1) + 1:
                            yield size, kernel, stride, padding, dilation


def test_live_taps_are_the_taps_that_read_a_pixel_and_the_cut_kernel_computes_the_same():
    cut_any = 0
    for size, kernel, stride, padding, dilation in _conv_geometries():
        outputs = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        reading = [tap for tap in range(kernel)
                   if any(0 <= o * stride - padding + tap * dilation < size for o in range(outputs))]
        cut = live_taps(size, kernel, stride, padding, dilation)
        if cut is None:
            continue
        cut_any += 1
        first, stop, cut_padding = cut
        assert list(range(first, stop)) == reading, (size, kernel, stride, padding, dilation)
        g = torch.Generator().manual_seed(size * 1000 + kernel * 100 + stride * 10 + padding)
        x = torch.randn(2, 3, size, 1, generator=g, dtype=torch.float64)
        w = torch.randn(4, 3, kernel, 1, generator=g, dtype=torch.float64)
        full = F.conv2d(x, w, stride=(stride, 1), padding=(padding, 0), dilation=(dilation, 1))
        cut_out = F.conv2d(x, w[:, :, first:stop], stride=(stride, 1), padding=(cut_padding, 0),
                           dilation=(dilation, 1))
        assert cut_out.shape == full.shape and torch.allclose(cut_out, full, rtol=1e-12, atol=0)
    assert cut_any > 50  # 68 geometries of this grid cut their kernel
    # ResNet18's last stage on 8x8 images: one-pixel maps read through the centre tap only; its
    # stride-2 entry from 2x2 maps through the lower-right 2x2 taps.
    assert live_taps(1, 3, 1, 1, 1) == (1, 2, 0) and live_taps(2, 3, 2, 1, 1) == (1, 3, 0)
    assert live_taps(8, 3, 1, 1, 1) is None  # every tap reads a pixel somewhere


def test_padding_skipping_convolutions_are_the_same_function_with_the_same_gradients():
    torch.manual_seed(0)
    net = get_registry("model").get("resnet18").obj(num_classes=5, in_chans=1, image_size=8)
    for m in net.modules():  # timm zero-initialises each block's last BatchNorm: no gradient flows
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
    plain = NormalizedClassifier(net, [0.5], [0.25]).double().train()
    skipping = copy.deepcopy(plain)
    assert skip_padding_taps(skipping) is skipping
    swapped = [name for name, m in skipping.named_modules() if type(m) is PaddingSkippingConv2d]
    # Every padded convolution: the 3x3 ones (1x1 shortcuts have no padding), with weights and
    # state_dict as they were.
    assert len(swapped) == 17 and all(
        type(plain.get_submodule(name)) is nn.Conv2d and plain.get_submodule(name).padding == (1, 1)
        for name in swapped)
    assert skipping.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = torch.arange(6) % 5
    grads = []
    for model in (plain, skipping):
        image = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(image), targets)
        grads.append(torch.autograd.grad(loss, [image, *model.parameters()]) + (loss,))
    for got, want in zip(*grads):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)
    # The taps that read only padding get gradient zero either way (here: all but layer4's centres).
    centre = skipping.model.layer4[1].conv1.weight
    assert centre.shape == (512, 512, 3, 3)
    index = [p is centre for p in skipping.parameters()].index(True)
    weight_grad = grads[1][1 + index]
    assert weight_grad[:, :, 1, 1].abs().sum() > 0
    off_centre = torch.ones(3, 3, dtype=torch.bool)
    off_centre[1, 1] = False
    assert not weight_grad[:, :, off_centre].any()
    # A channels-last weight gets its gradient channels-last (no copy to accumulate it).
    skipping.float().to(memory_format=torch.channels_last).zero_grad()
    F.cross_entropy(skipping(x.float()), targets).backward()
    assert centre.grad.stride() == centre.stride() != centre.contiguous().stride()


def test_whole_map_taps_are_given_exactly_where_every_output_reads_every_pixel():
    covered = 0
    for size, kernel, stride, padding, dilation in _conv_geometries():
        outputs = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
        reads = {(o * stride - padding + t * dilation, o): t
                 for o in range(outputs) for t in range(kernel)
                 if 0 <= o * stride - padding + t * dilation < size}
        taps = whole_map_taps(size, kernel, stride, padding, dilation)
        if len(reads) < size * outputs:
            assert taps is None, (size, kernel, stride, padding, dilation)
            continue
        covered += 1
        assert taps == tuple(tuple(reads[pixel, o] for o in range(outputs)) for pixel in range(size))
    assert covered > 30
    assert whole_map_taps(2, 3, 1, 1, 1) == ((1, 0), (2, 1))  # ResNet18's 2x2 maps on 8x8 images
    assert whole_map_taps(1, 3, 1, 1, 1) == ((1,),) and whole_map_taps(2, 3, 2, 1, 1) == ((1,), (2,))
    assert whole_map_taps(3, 3, 1, 1, 1) is None  # output 0 does not read pixel 2


@pytest.fixture
def convolutions(monkeypatch) -> list:
    """The calls of ``F.conv2d`` from here on (``nn.Conv2d``'s and the toolkit's), as they run."""
    calls, conv2d = [], F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *args: calls.append(args) or conv2d(*args))
    return calls


@pytest.mark.parametrize("size, kernel, stride, padding, bias", [
    ((1, 1), 3, 1, 1, False), ((2, 2), 3, 1, 1, True), ((2, 2), 3, 2, 1, False), ((1, 2), 3, 1, 1, True),
    ((3, 3), 5, 1, 2, True), ((2, 1), 3, 2, 1, True)])
def test_frozen_convolutions_whose_outputs_read_the_whole_map_are_one_matrix_product(
        convolutions, size, kernel, stride, padding, bias):
    # Synthesis's case (weights frozen): no convolution is called, and the outputs and the images'
    # gradients are the convolution's, channels-last out of channels-last in. Training's weights
    # (requires_grad on) keep the convolution, so trained models are what they were.
    g = torch.Generator().manual_seed(sum(size) * 10 + kernel + stride)
    plain = nn.Conv2d(5, 7, kernel, stride=stride, padding=padding, bias=bias).double()
    skipping = skip_padding_taps(copy.deepcopy(plain)).requires_grad_(False)
    for layout in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(4, 5, *size, generator=g, dtype=torch.float64)
        x = x.contiguous(memory_format=layout).requires_grad_(True)
        want = plain(x)
        upstream = torch.randn(want.shape, generator=g, dtype=torch.float64)
        want_grad, = torch.autograd.grad(want, x, upstream)
        convolutions.clear()
        got = skipping(x)
        got_grad, = torch.autograd.grad(got, x, upstream)
        assert not convolutions
        assert got.shape == want.shape and got.is_contiguous(memory_format=layout)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-14)
        assert torch.allclose(got_grad, want_grad, rtol=1e-12, atol=1e-14)
        skipping.requires_grad_(True)(x)  # weights that take gradients: a convolution
        skipping.requires_grad_(False)(torch.randn(1, 5, 5, 5, dtype=torch.float64))  # a larger map too
        assert len(convolutions) == 2


def test_frozen_convolutions_take_the_matrix_product_only_where_it_computes_the_same(convolutions):
    # Grouped convolutions, maps whole along one axis only, and unbatched (C, H, W) images stay
    # convolutions; torch.func's per-image gradients through frozen weights take the product.
    g = torch.Generator().manual_seed(3)
    cases = [(nn.Conv2d(4, 6, 3, padding=1, groups=2), torch.randn(3, 4, 2, 2, generator=g)),
             (nn.Conv2d(4, 6, 3, padding=1), torch.randn(3, 4, 2, 5, generator=g)),
             (nn.Conv2d(4, 6, 3, padding=1), torch.randn(4, 2, 2, generator=g))]
    for number, (plain, x) in enumerate(cases, 1):
        plain = plain.double().requires_grad_(False)
        skipping = skip_padding_taps(copy.deepcopy(plain))
        assert torch.allclose(skipping(x.double()), plain(x.double()), rtol=1e-12, atol=1e-14)
        assert len(convolutions) == 2 * number  # the plain one's and the skipping one's
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(12, 4)).double()
    skipping = skip_padding_taps(copy.deepcopy(plain)).requires_grad_(False)
    x = torch.rand(5, 2, 2, 2, generator=g, dtype=torch.float64)
    got, want = (torch.func.vmap(torch.func.grad(lambda image: model(image[None]).logsumexp(1).sum()))(x)
                 for model in (skipping, plain))
    assert len(convolutions) == 2 * len(cases) + 1 and torch.allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore::FutureWarning:torch")  # torch.jit's deprecation
def test_padding_skipping_convolutions_work_under_torch_func():
    # A third-party synthesizer may take per-image gradients with torch.func (vmap of grad).
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3, 4))
    skipping = skip_padding_taps(copy.deepcopy(plain))
    x = torch.rand(5, 2, 1, 1)

    def loss(model, params, image):
        return torch.func.functional_call(model, params, (image[None],)).logsumexp(1).sum()

    for argnums in (1, 2):  # the parameters, the images
        got, want = (torch.func.vmap(torch.func.grad(loss, argnums), (None, None, 0))(
            model, dict(model.named_parameters()), x) for model in (skipping, plain))
        for a, b in zip(*(g.values() if isinstance(g, dict) else [g] for g in (got, want))):
            assert torch.allclose(a, b, atol=1e-6)
    # Forward mode too: a derivative along a direction in weight space.
    params = dict(plain.named_parameters())
    direction = {name: torch.randn_like(value) for name, value in params.items()}
    (_, got), (_, want) = (torch.func.jvp(lambda p: loss(model, p, x[0]), (params,), (direction,))
                           for model in (skipping, plain))
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.filterwarnings("ignore::FutureWarning:torch")  # torch.jit's deprecation
def test_padding_skipping_convolutions_trace_for_every_input_size():
    # torch.fx records the cut as one call decided at run time; torch.jit.trace, which would
    # record one size's cut for all, gets every tap. Either then serves other sizes exactly.
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1))
    skipping = skip_padding_taps(copy.deepcopy(plain))
    small, large = torch.rand(2, 2, 1, 1), torch.rand(2, 2, 4, 5)
    graph = torch.fx.symbolic_trace(skipping)
    traced = torch.jit.trace(skipping, small)
    for model in (graph, traced):
        for x in (small, large):
            assert torch.allclose(model(x), plain(x), atol=1e-6)


def test_only_plain_zero_padded_convolutions_skip_taps():
    class Standardised(nn.Conv2d):  # a subclass computes something else: left alone
        pass

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Standardised(2, 2, 3, padding=1),
                          nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
                          nn.Conv2d(2, 2, 3, padding="same"), nn.Conv2d(2, 2, 1))
    skip_padding_taps(model)
    assert [type(m).__name__ for m in model] == [
        "PaddingSkippingConv2d", "Standardised", "Conv2d", "Conv2d", "Conv2d"]


def test_study_models_skip_padding_taps():
    from tests.conftest import make_tiny_dataset
    from toolkit.stages.train import build_model

    data = make_tiny_dataset(size=8)
    model = build_model(get_registry("model").get("resnet18"), data)
    assert any(type(m) is PaddingSkippingConv2d for m in model.modules())
