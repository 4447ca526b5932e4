--- hero.models.batch_shapes: the shape and dtype every field of a collated batch must have, checked
-- before a forward pass reads it.
--
-- The forward passes read a batch through views, gathers and broadcasting ops, so most tensors of a
-- wrong shape do not fail there: a video dimension of 1 broadcasts over every video, a mask one
-- column short shifts every masked row, integer features are converted. They give a loss, a wrong
-- one. Each field is described by its dimensions, named by what they count; a name takes its size
-- from the first field that has it, and every later field must agree. Only sizes and dtypes are
-- read, never values, so a check costs no device synchronisation.
local core = require "hero.core"

local M = {}

--- What each dimension name counts (for the error messages).
M.DIMENSIONS = {
  S = "subtitle rows", Ls = "subtitle tokens", Lv = "frames per subtitle row", Lo = "cross-modal positions",
  B = "video rows", Lc = "frames per video", D = "feature width", Nq = "queries", Lq = "query tokens",
  Nc = "captions", Lt = "caption tokens", Lg = "frames of the longest caption segment", N = "questions",
  T = "masked tokens", n = "masked frames",
}

local FLOAT = {f16 = true, bf16 = true, f32 = true, f64 = true}

-- dtype classes: "float" features and targets, "integer" ids, indices and labels, "mask" any
-- dtype (the reference's masks are i64; bool and float masks select the same positions)
local function dtype_ok(kind, dtype)
  if kind == "float" then return FLOAT[dtype] == true end
  if kind == "integer" then return not FLOAT[dtype] and dtype ~= "bool" end
  return true
end

local function show(size)
  local parts = {}
  for i, n in ipairs(size) do parts[i] = tostring(n) end
  return "[" .. table.concat(parts, ", ") .. "]"
end

local function show_spec(dims)
  local parts = {}
  for i, d in ipairs(dims) do
    parts[i] = type(d) == "table" and (tostring(d[1]) .. " or " .. d[2]) or tostring(d)
  end
  return "[" .. table.concat(parts, ", ") .. "]"
end

local function explain(dims, bound)
  local out, seen = {}, {}
  for _, d in ipairs(dims) do
    local name = type(d) == "table" and d[2] or d
    if type(name) == "string" and not seen[name] then
      seen[name] = true
      local b = bound[name]
      out[#out + 1] = b and string.format("%s (%s) = %d from %s", name, M.DIMENSIONS[name] or name, b.size, b.from)
        or string.format("%s (%s)", name, M.DIMENSIONS[name] or name)
    end
  end
  return table.concat(out, ", ")
end

--- Checks one tensor against dims (a list of dimension names, integers, or {1, name}: 1 or the
-- name's size, a row that broadcasts) and a dtype class, binding names in `bound`
-- (name -> {size =, from =}). Raises through owner:error with `what` naming the tensor; `field`
-- names it where a later error says where a size came from.
function M.check_tensor(owner, what, t, dims, kind, bound, field)
  if not core.is_tensor(t) then owner:error("%s must be a tensor, got %s", what, type(t)) end
  local size = t:size()
  local function wrong()
    owner:error("%s is %s, expected %s: %s", what, show(size), show_spec(dims), explain(dims, bound))
  end
  if #size ~= #dims then wrong() end
  for i, d in ipairs(dims) do
    local n = size[i]
    local name, one_ok = d, false
    if type(d) == "table" then name, one_ok = d[2], true end
    if type(name) == "number" then
      if n ~= name then wrong() end
    elseif not (one_ok and n == 1) then
      local b = bound[name]
      if b == nil then
        bound[name] = {size = n, from = string.format("%s dim %d", field or what, i)}
      elseif b.size ~= n then
        wrong()
      end
    end
  end
  if not dtype_ok(kind, t:dtype()) then
    owner:error("%s is %s, expected %s", what, t:dtype(), kind == "float" and "a float dtype (f32, f64, bf16, f16)"
      or "an integer dtype (i64, i32, u8)")
  end
end

--- Checks the fields of `batch` against `fields` (a list of {name, dims, kind, optional = true}),
-- binding dimension names in `bound` (a table, updated; returned). `what` names the batch in the
-- errors ("forward: the mlm batch").
function M.check(owner, what, batch, fields, bound)
  bound = bound or {}
  if type(batch) ~= "table" then owner:error("%s must be a table of tensors, got %s", what, type(batch)) end
  for _, f in ipairs(fields) do
    local name, t = f[1], batch[f[1]]
    if t == nil then
      if not f.optional then owner:error("%s has no field '%s'", what, name) end
    else
      M.check_tensor(owner, string.format("%s's %s", what, name), t, f[2], f[3], bound, name)
    end
  end
  return bound
end

--- The names of a field list's required fields, in order.
function M.required(fields)
  local out = {}
  for _, f in ipairs(fields) do
    if not f.optional then out[#out + 1] = f[1] end
  end
  return out
end

--- A field list: the fields of every list given, in order.
function M.join(...)
  local out = {}
  for _, list in ipairs {...} do
    for _, f in ipairs(list) do out[#out + 1] = f end
  end
  return out
end

--- The representation path (the reference's video_collate): subtitle rows through the cross-modal
-- transformer, frames of each video through the temporal one.
M.REPR = {
  {"f_sub_input_ids", {"S", "Ls"}, "integer"},
  {"f_sub_pos_ids", {{1, "S"}, "Ls"}, "integer"},
  {"f_v_feats", {"S", "Lv", "D"}, "float"},
  {"f_v_pos_ids", {{1, "S"}, "Lv"}, "integer"},
  {"f_attn_masks", {"S", "Lo"}, "mask"},
  {"f_gather_index", {"S", "Lo"}, "integer"},
  {"c_v_feats", {"B", "Lc", "D"}, "float"},
  {"c_attn_masks", {"B", "Lc"}, "mask"},
}

--- The Lua side of the representation path: num_subs (B counts summing to S) and
-- sub_idx2frame_idx (B lists of {subtitle, {frames}}), checked against the bound sizes.
function M.check_subtitles(owner, what, batch, bound)
  local num_subs, s2f = batch.num_subs, batch.sub_idx2frame_idx
  local B, S = bound.B and bound.B.size, bound.S and bound.S.size
  if type(num_subs) ~= "table" then
    owner:error("%s's num_subs must be a list of counts, got %s", what, type(num_subs))
  end
  if type(s2f) ~= "table" then
    owner:error("%s's sub_idx2frame_idx must be a list per video, got %s", what, type(s2f))
  end
  if B and (#num_subs ~= B or #s2f ~= B) then
    owner:error("%s has %d num_subs and %d sub_idx2frame_idx entries for %d video rows (B from %s)", what,
      #num_subs, #s2f, B, bound.B.from)
  end
  local total = 0
  for i, n in ipairs(num_subs) do
    if math.type(n) ~= "integer" or n < 0 then
      owner:error("%s's num_subs[%d] must be a count, got %s", what, i, tostring(n))
    end
    total = total + n
  end
  if S and total ~= S then
    owner:error("%s's num_subs add up to %d subtitle rows, its tensors hold %d (S from %s)", what, total, S,
      bound.S.from)
  end
end

--- A batch's queries (VSM, VCMR).
M.QUERIES = {
  {"query_input_ids", {"Nq", "Lq"}, "integer"},
  {"query_pos_ids", {{1, "Nq"}, "Lq"}, "integer"},
  {"query_attn_masks", {"Nq", "Lq"}, "mask"},
}

--- The fields each pre-training task reads (the reference's collate of that task).
M.PRETRAIN = {
  mlm = {
    {"input_ids", {"S", "Ls"}, "integer"},
    {"position_ids", {{1, "S"}, "Ls"}, "integer"},
    {"v_feat", {"S", "Lv", "D"}, "float"},
    {"gather_index", {"S", "Lo"}, "integer"},
    {"attn_masks", {"S", "Lo"}, "mask"},
    {"txt_mask_tgt", {"S", "Lo"}, "mask"},
    {"txt_labels", {"T"}, "integer"},
  },
  ["mfm-nce"] = M.join(M.REPR, {
    {"f_v_masks", {"S", "Lv"}, "mask"},
    {"c_v_masks", {"B", "Lc"}, "mask"},
    {"feat_targets", {"n", "D"}, "float"},
  }),
  fom = M.join(M.REPR, {
    {"shuffled_orders", {"B", "Lc"}, "integer"},
    {"targets", {"B", "Lc"}, "integer"},
  }),
  vsm = M.join(M.REPR, M.QUERIES, {
    {"q_vidx", {"Nq"}, "integer"},
    {"targets", {"Nq", 2}, "integer"},
  }),
}
M.PRETRAIN.mffr = M.PRETRAIN["mfm-nce"]

--- The fields each fine-tuning model reads (the reference's collate of its task). VideoQA's video
-- rows are the answer copies (B = N * answers); the targets are optional (inference batches).
M.DOWNSTREAM = {
  vcmr = M.join(M.REPR, M.QUERIES, {
    {"q_vidx", {"Nq"}, "integer", optional = true},
    {"targets", {"Nq", 2}, "integer", optional = true},
  }),
  videoqa = M.join(M.REPR, {
    {"qa_input_ids", {"B", "Lq"}, "integer"},
    {"qa_pos_ids", {{1, "B"}, "Lq"}, "integer"},
    {"qa_attn_masks", {"B", "Lq"}, "mask"},
    {"targets", {"N", 1}, "integer", optional = true},
    {"ts_targets", {"N", 2}, "integer", optional = true},
  }),
  violin = M.join(M.REPR, {
    {"q_input_ids", {"B", "Lq"}, "integer"},
    {"q_pos_ids", {{1, "B"}, "Lq"}, "integer"},
    {"q_attn_masks", {"B", "Lq"}, "mask"},
    {"targets", {"B", 1}, "integer", optional = true},
  }),
  tvc = M.join(M.REPR, {
    {"cap_input_ids", {"Nc", "Lt"}, "integer"},
    {"cap_pos_ids", {{1, "Nc"}, "Lt"}, "integer"},
    {"cap_tgt_ids", {"Nc", "Lt"}, "integer"},
    {"cap_attn_mask", {"Nc", "Lg"}, "mask"},
  }),
}

--- Checks a batch of the representation path plus its task's fields: check() with the model's
-- own dimensions (v_encoder:feature_dims()), then num_subs / sub_idx2frame_idx.
function M.check_batch(owner, what, batch, fields, v_encoder)
  local bound = M.check(owner, what, batch, fields, v_encoder:feature_dims())
  M.check_subtitles(owner, what, batch, bound)
  return bound
end

return M
