"""Subsets of stored data (input_pipeline.subset): class-balanced or a fixed random
permutation, never the first examples of ordered storage; bundled MNIST keeps its order."""
import numpy as np
import pytest

from biflow_jax.data import input_pipeline as ip

from test_train import parse_config


def prefix_counts(labels, order, m):
  return np.bincount(labels[order[:m]], minlength=labels.max() + 1)


def test_class_balanced_order_balances_every_prefix():
  labels = np.repeat([0, 1, 2], 40)  # stored class by class, as a JPEG folder is
  order = ip.class_balanced_order(labels)
  assert sorted(order.tolist()) == list(range(120))  # a permutation: nothing lost or repeated
  for m in range(1, 121):
    counts = prefix_counts(labels, order, m)
    assert counts.max() - counts.min() <= 1, (m, counts)
  assert prefix_counts(labels, order, 30).tolist() == [10, 10, 10]
  assert prefix_counts(labels, order, 24).tolist() == [8, 8, 8]
  # Within a class the order is a fixed random permutation, not the stored order.
  class0 = order[labels[order] == 0]
  assert class0.tolist() != sorted(class0.tolist())
  np.testing.assert_array_equal(order, ip.class_balanced_order(labels))  # fixed
  assert not np.array_equal(order, ip.class_balanced_order(labels, seed=1))


def test_class_balanced_order_with_unequal_classes():
  labels = np.repeat([0, 1, 2], [5, 2, 10])
  order = ip.class_balanced_order(labels)
  assert labels[order].tolist() == [0, 1, 2, 0, 1, 2, 0, 2, 0, 2, 0, 2, 2, 2, 2, 2, 2]
  with pytest.raises(ValueError, match='one-dimensional'):
    ip.class_balanced_order(labels[None])


def test_bundled_mnist_keeps_its_stored_order():
  """The bundled split is already a fixed random permutation: held-out numbers of earlier
  runs stay comparable, so its subsets are its stored prefix."""
  config = parse_config()  # tiny: 512 train, 64 held-out
  source = ip.load_source(config, 'heldout')
  heldout, record = ip.take_subset(config, 'heldout', 32)
  old = source.gather(np.arange(32))  # what evaluation and training used before
  np.testing.assert_array_equal(heldout['image'], old['image'])
  np.testing.assert_array_equal(ip.load_heldout(config, 32)['label'], old['label'])
  assert record['method'] == 'stored_order_of_fixed_permutation' and record['seed'] is None
  assert (record['num_examples'], record['of']) == (32, 64)
  assert sum(record['class_counts']) == 32 and len(record['class_counts']) == 10
  assert ip.take_subset(config, 'train', 10_000)[1]['num_examples'] == 512  # capped


def stub_source(length):
  return ip.Source(length, gather=None)


@pytest.mark.parametrize('source', ['tfds', 'latents'])
def test_sources_without_labels_in_memory_take_a_fixed_random_permutation(source):
  config = parse_config()
  config.data.source = source
  chosen = ip.subset(config, 'heldout', stub_source(1000), 100)
  assert chosen.seed == ip.SUBSET_SEED and chosen.of == 1000
  idx = chosen.indices
  assert len(set(idx.tolist())) == 100 and idx.min() >= 0 and idx.max() < 1000
  assert idx.tolist() != sorted(idx.tolist())  # not a prefix of the stored order
  assert idx.max() > 500  # drawn from the whole split
  np.testing.assert_array_equal(idx, ip.subset(config, 'heldout', stub_source(1000), 100).indices)
  if source == 'latents':  # record 2i is source image i, 2i+1 its mirror: never the mirror
    assert chosen.method == 'random_permutation_unmirrored' and np.all(idx % 2 == 0)
    assert ip.subset(config, 'heldout', stub_source(10)).indices.size == 5
  else:
    assert chosen.method == 'random_permutation'
  with pytest.raises(ValueError, match="part must be 'train' or 'heldout'"):
    ip.subset(config, 'test', stub_source(10))
