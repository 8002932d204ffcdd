"""Split one dataset's pool across simulated hospitals (no Flower runtime; flwr-datasets' partitioners).

Every label scheme runs on a seeded permutation of the pool wrapped in a tiny Hugging Face dataset
(``label`` column plus the original row number ``idx``); each site's indices are read back from
``idx``. Shuffling first matters: flwr's IID and size partitioners cut contiguous blocks.

Schemes (``PartitionSpec.label`` / ``.quantity``), one module each:

* ``iid``: ``IidPartitioner``, equal sizes (+-1), every site's labels distributed like the pool
  (`label_skew`).
* ``dirichlet:ALPHA``: ``DirichletPartitioner`` (per class, Dir(alpha) shares over the sites, no
  self-balancing); re-drawn by flwr (up to 10 more times) until every site reaches a minimum size
  (`label_skew`).
* ``pathological:K``: ``PathologicalPartitioner`` with a class assignment that covers as many
  classes as possible (`label_skew.striped_pathological`); every site holds exactly K classes. Only
  when ``sites * K < classes`` can not every class be placed: those classes' samples are left out.
* ``quantity[:powerlaw|lognormal]`` (iid labels): ``SizePartitioner`` with skewed, seeded sizes
  (`quantity`).
* ``lesion:ALPHA`` (segmentation): the Dirichlet scheme over lesion-size bins (none / small /
  medium / large, `common.seg_data.lesion_size_bins`) computed from the masks instead of labels:
  sites differ in how many and how large lesions they see (`label_skew.lesion_bins`).
* ``by-tag:KEYWORD`` (DICOM): one site per distinct value of a per-sample header tag (e.g.
  Manufacturer), sites ordered by value; cfg.sites must equal the number of values. The real
  hospital/scanner split, so no randomness (`by_tag`).

All schemes other than that pathological corner case cover the whole pool; sites are disjoint.
`federation` turns the index lists into sites (each split by `site_split`, shifted when the spec
says so); `loader` builds a run's federation once per process for the simulated sites.
"""
