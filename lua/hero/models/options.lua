--- hero.models.options: the option tables of the models' constructors and methods, checked.
--
-- A model reads its options once, where it is built or called; a misspelt key ({margn = 0.7}) or a
-- value of the wrong kind ({ranking_loss_type = "LSE"}, {lsr = -0.1}, {margin = 0/0}) would
-- otherwise leave a default in place or give a NaN loss, without a word. Each option is described
-- by what it must hold:
--   "boolean", "string", "function", "table", "generator", "dtype", "any"
--   "integer", "integer >= 0", "integer >= 1", "number" (finite), "number >= 0", "number > 0",
--   "probability" ([0, 1]), "probability < 1" ([0, 1))
--   a list of the strings it may be ({"hinge", "lse"})
local M = {}

local function finite(v) return type(v) == "number" and v == v and v > -math.huge and v < math.huge end

local CHECKS = {
  boolean = function(v) return type(v) == "boolean" end,
  string = function(v) return type(v) == "string" end,
  ["function"] = function(v) return type(v) == "function" end,
  table = function(v) return type(v) == "table" end,
  generator = function(v) return type(v) == "userdata" end,
  dtype = function(v) return type(v) == "string" end,
  any = function() return true end,
  integer = function(v) return math.type(v) == "integer" end,
  ["integer >= 0"] = function(v) return math.type(v) == "integer" and v >= 0 end,
  ["integer >= 1"] = function(v) return math.type(v) == "integer" and v >= 1 end,
  ["integer >= -1"] = function(v) return math.type(v) == "integer" and v >= -1 end,
  ["-1 or integer >= 1"] = function(v) return math.type(v) == "integer" and (v == -1 or v >= 1) end,
  number = finite,
  ["number >= 0"] = function(v) return finite(v) and v >= 0 end,
  ["number > 0"] = function(v) return finite(v) and v > 0 end,
  probability = function(v) return finite(v) and v >= 0 and v <= 1 end,
  ["probability < 1"] = function(v) return finite(v) and v >= 0 and v < 1 end,
  ["probability > 0"] = function(v) return finite(v) and v > 0 and v <= 1 end,
  list = function(v)
    if type(v) ~= "table" then return false end
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    return n == #v
  end,
}

local function describe(kind)
  if type(kind) == "table" then return "one of " .. table.concat(kind, ", ") end
  if kind == "probability" then return "a probability in [0, 1]" end
  if kind == "probability < 1" then return "a probability in [0, 1)" end
  if kind == "probability > 0" then return "a probability in (0, 1]" end
  if kind == "-1 or integer >= 1" then return "-1 (no limit) or an integer >= 1" end
  if kind == "list" then return "a list without holes" end
  if kind == "generator" then return "a hero.Generator" end
  if kind:find("^integer") then return "an " .. kind end
  if kind:find("^number") then return "a finite " .. kind end
  return "a " .. kind
end

local function show(v)
  if type(v) == "string" then return "'" .. v .. "'" end
  if type(v) == "number" then return tostring(v) end
  return type(v)
end

--- Checks `opts` (nil: none) against `spec` (name -> kind), raising "<who>: ..." at `level`
-- (error()'s level counted from the caller of check; default 2: the caller's caller). Keys in the
-- set `passthrough` are accepted unchecked (the reference's other options, in a table of its
-- options handed over whole). Returns opts or an empty table.
function M.check(who, opts, spec, level, passthrough)
  level = (level or 2) + 1
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(string.format("%s: options must be a table, got %s", who, type(opts)), level) end
  for k, v in pairs(opts) do
    local kind = spec[k]
    if kind == nil and passthrough and passthrough[k] then kind = "any" end
    if kind == nil then
      local names = {}
      for name in pairs(spec) do names[#names + 1] = name end
      table.sort(names)
      error(string.format("%s: unknown option '%s' (%s)", who, tostring(k), table.concat(names, ", ")), level)
    end
    local ok
    if type(kind) == "table" then
      ok = false
      for _, allowed in ipairs(kind) do ok = ok or v == allowed end
    else
      ok = CHECKS[kind](v)
    end
    if not ok then error(string.format("%s: option %s must be %s, got %s", who, k, describe(kind), show(v)), level) end
  end
  return opts
end

--- spec with the entries of `more` added (a new table).
function M.with(spec, more)
  local out = {}
  for k, v in pairs(spec) do out[k] = v end
  for k, v in pairs(more or {}) do out[k] = v end
  return out
end

--- The hierarchical encoder's options, which every model passes on to it.
M.ENCODER = {vfeat_dim = "integer >= 1", max_frm_seq_len = "integer >= 1", fom_classes = "integer >= 1",
             dtype = "dtype", generator = "generator"}

--- Hard negatives ({pool_size, weight}).
M.HARD_NEGATIVE = {pool_size = "integer >= 1", weight = "number >= 0"}

--- HeroForPretraining's (and HeroForVcmr's, HeroForVr's) constructor options.
M.PRETRAIN = M.with(M.ENCODER, {
  vocab_pad = "integer >= 0", lw_st_ed = "number >= 0", lw_neg_ctx = "number >= 0", lw_neg_q = "number >= 0",
  margin = "number", ranking_loss_type = {"hinge", "lse"}, hard_negative = "table",
  drop_svmr_prob = "probability", use_all_neg = "boolean", nce_temp = "number > 0", conv_kernel_size = "integer",
  conv_stride = "integer",
})

--- The options of the ranking forwards (VSM, VCMR/VR): evaluation values, the distributed
-- Trainer's gather, the per-step draw, hard negatives, the cross start/end path.
M.RANKING_FORWARD = {evaluate = "boolean", all_gather = "any", draw = "function", hard_negative = "table",
                     cross = "boolean"}

--- Checks a hard-negative setting ({pool_size, weight} or nil).
function M.check_hard_negative(who, hn, level)
  if hn == nil then return end
  M.check(who .. ": hard_negative", hn, M.HARD_NEGATIVE, (level or 2) + 1)
end

return M
