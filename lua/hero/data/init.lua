--- hero.data: data preparation and loading for HERO (subtitle/frame alignment, ...).
local data = {}

local align = require "hero.data.align"
data.align_subtitles = align.align_subtitles
data.subtitle_db_alignment = align.subtitle_db_alignment
data.compute_sub2frames = align.compute_sub2frames

return data
