"""One dynamic partition per project and scene: keys look like "detective_series_001/scene_005"."""

import dagster as dg

# One dimension keyed "{project_id}/{subject}" instead of two dynamic dimensions, whose
# project x scene grid would be almost entirely empty.
scenes = dg.DynamicPartitionsDefinition(name="scenes")
