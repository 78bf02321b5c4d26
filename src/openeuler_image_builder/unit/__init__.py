"""The unit's bookkeeping around the pipeline.

Background jobs, the build history and rebuild queue, the fleet seen through the peer relation,
the local image inventory, retention, the rebuild schedule, status texts and action parameters.
"""
