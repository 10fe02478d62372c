"""Fleet scale: many rosbag2 recordings through ``process_bag`` on Ray, from a laptop to a GPU cluster.

``semsam fleet`` (semsam_ros.cli.fleet) drives ``runner.run_fleet``, the one module that imports Ray. A work unit
is a bag or a time slice of one (``plan``); workers process units into part bags and finish each bag (``work``:
merge the parts in order (``merge``), write its Parquet rows (``dataset``), move both into place). See
docs/fleet.md. Nothing here imports Ray but ``runner``.
"""
