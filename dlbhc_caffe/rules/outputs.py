"""Which tops count in a net's loss and which are its outputs, and how Caffe reports them.

- `loss_outputs(net)`: the loss tops and their weights (a `*Loss` layer's first top weighs 1
  unless loss_weight says otherwise; any top with a nonzero loss_weight counts).
- `net_outputs(net)`: the tops no later layer consumes, in Caffe's order (Net::Init keeps them in
  a std::set, so they come sorted by name and output #i here is Caffe's "output #i").
- `output_lines(kind, values, weights)`: Solver::Step's and Solver::Test's
  "    Train net output #0: loss = 2.3 (* 1 = 2.3 loss)" lines.

>>> from dlbhc_caffe import proto
>>> net = proto.parse_text('''
...   layer { name: "d" type: "Input" top: "x" }
...   layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "x" top: "loss" }''',
...   proto.pb.NetParameter())
>>> loss_outputs(net), net_outputs(net)
({'loss': 1.0}, ['loss'])
>>> output_lines("Test", {"acc": [0.5], "loss": [2.0]}, {"loss": 1.0})
['    Test net output #0: acc = 0.5', '    Test net output #1: loss = 2 (* 1 = 2 loss)']
"""


def fmt(value):
    """A number as Caffe's glog lines print it (C++ ostream default: 6 significant digits)."""
    return f"{float(value):g}"


def loss_outputs(net):
    """{top name: loss weight} of the tops that count in the net's loss (weight != 0).

    `net` should be filtered to one phase first (proto.filter_net).
    """
    losses = {}
    for layer in net.layer:
        weights = list(layer.loss_weight)
        if not weights and layer.type.endswith("Loss") and layer.top:
            weights = [1.0] + [0.0] * (len(layer.top) - 1)
        for top, weight in zip(layer.top, weights):
            if weight:
                losses[top] = losses.get(top, 0.0) + float(weight)
    return losses


def net_outputs(net):
    """The tops no later layer consumes, sorted by name: Caffe's output blobs and their order."""
    available = set()
    for layer in net.layer:
        available.difference_update(layer.bottom)
        available.update(layer.top)
    return sorted(available)


def output_lines(kind, values, weights):
    """Caffe's output lines: `kind` "Train" or "Test"; `values` {output: its values, flattened}
    in output order; `weights` {output: loss weight} (0 or absent: no loss part)."""
    lines, index = [], 0
    for name, flat in values.items():
        weight = weights.get(name, 0.0)
        for value in flat:
            line = f"    {kind} net output #{index}: {name} = {fmt(value)}"
            if weight:
                line += f" (* {fmt(weight)} = {fmt(weight * value)} loss)"
            lines.append(line)
            index += 1
    return lines
