--- Video QA (TVQA, How2QA) and VIOLIN evaluation from logits, as the reference's
-- eval_videoQA.py:validate_videoQA and eval_violin.py:validate_violin compute it.
-- Losses are summed per batch in float32 (each batch sum rounded to float32, as .item() of a
-- float32 tensor), the batch sums added in double and divided by the number of examples.
local M = {}

local function hero() return require "hero" end

local function check(logits, targets, qids, name, width)
  local h = hero()
  if not h.is_tensor(logits) then error(name .. ": logits must be a tensor", 0) end
  if logits:dim() ~= 2 or (width and logits:size(2) ~= width) then
    error(string.format("%s: logits must be [N, %s] (got %s)", name, width or "C", table.concat(logits:size(), "x")), 0)
  end
  local n = logits:size(1)
  if targets ~= nil then
    if not h.is_tensor(targets) then error(name .. ": targets must be a tensor (or nil)", 0) end
    if targets:numel() ~= n then
      error(string.format("%s: %d targets for %d rows of logits", name, targets:numel(), n), 0)
    end
  end
  if type(qids) ~= "table" or #qids ~= n then
    error(string.format("%s: qids must list the %d questions", name, n), 0)
  end
  return n
end

--- Video QA: prediction = argmax over the answers (first on ties); with targets, loss = summed
-- cross entropy / N and accuracy = correct / N.
-- logits [N, A] (A = 5), targets i64 [N] (nil, or any target < 0: predictions only, as the
-- reference does for test splits), qids array. opts.batch_size (default: all in one batch) sets
-- the float32 batch sums of the loss. Returns val_log {"valid/loss", "valid/acc"} ({} without
-- targets), results {tostring(qid) = answer index (0-based)}.
function M.videoqa(logits, targets, qids, opts)
  opts = opts or {}
  local n = check(logits, targets, qids, "videoqa")
  local x = logits:float()
  local pred = x:argmax(2):totable()
  local results = {}
  for i = 1, n do results[tostring(qids[i])] = pred[i] end
  local val_log = {}
  if targets == nil or n == 0 then return val_log, results end
  local tg = targets:long():reshape(n)
  if tg:min():item() < 0 then return val_log, results end
  local bs = opts.batch_size or n
  local loss, correct = 0.0, 0
  local tt = tg:totable()
  for i = 1, n do if pred[i] == tt[i] then correct = correct + 1 end end
  for b0 = 1, n, bs do
    local m = math.min(bs, n - b0 + 1)
    local l = hero().cross_entropy(x:narrow(1, b0, m), tg:narrow(1, b0, m), {reduction = "sum"})
    loss = loss + l:item()
  end
  val_log["valid/loss"] = loss / n
  val_log["valid/acc"] = correct / n
  return val_log, results
end

--- Sigmoid in float32 (what decides the VIOLIN prediction; 1 / (1 + exp(-x)) rounded to float32,
-- so a logit of 5e-8 gives exactly 0.5 and predicts 0).
function M.sigmoid_f32(logits)
  return logits:float():sigmoid()
end

--- VIOLIN: prediction = sigmoid(logit) > 0.5 in float32; loss = summed binary cross entropy on the
-- sigmoid (log terms clamped at -100, as PyTorch's BCE) / N; accuracy = correct / N.
-- logits [N, 1] or [N], targets 0/1 [N], qids array; opts.split ("test") names the log keys,
-- opts.batch_size the float32 batch sums. Returns val_log {"valid/<split>_loss", "valid/<split>_acc"},
-- results {tostring(qid) = 0 or 1}; with no row both are empty.
function M.violin(logits, targets, qids, opts)
  opts = opts or {}
  local h = hero()
  if h.is_tensor(logits) and logits:dim() == 1 then logits = logits:unsqueeze(2) end
  local n = check(logits, targets, qids, "violin", 1)
  if targets == nil then error("violin: targets are required (the reference always computes the loss)", 0) end
  -- no statement (an empty share of a split): no loss and no accuracy to average, as videoqa
  if n == 0 then return {}, {} end
  local p = M.sigmoid_f32(logits):reshape(n)
  local pred = p:gt(0.5):totable()
  local y = targets:float():reshape(n)
  local yt = y:totable()
  for i = 1, n do
    if yt[i] ~= 0 and yt[i] ~= 1 then
      error(string.format("violin: target %d is %s; a statement is true (1) or false (0)", i, tostring(yt[i])), 0)
    end
  end
  local results, correct = {}, 0
  for i = 1, n do
    local a = pred[i] and 1 or 0
    results[tostring(qids[i])] = a
    if a == yt[i] then correct = correct + 1 end
  end
  -- PyTorch BCE: (y - 1) * max(log(1 - p), -100) - y * max(log(p), -100), in float32.
  local logp = p:log():clamp(-100, nil)
  local log1mp = (1 - p):log():clamp(-100, nil)
  local terms = (y - 1) * log1mp - y * logp
  local bs = opts.batch_size or n
  local loss = 0.0
  for b0 = 1, n, bs do
    local m = math.min(bs, n - b0 + 1)
    loss = loss + terms:narrow(1, b0, m):sum():item()
  end
  local split = opts.split or "test"
  local val_log = {}
  val_log["valid/" .. split .. "_loss"] = loss / n
  val_log["valid/" .. split .. "_acc"] = correct / n
  return val_log, results
end

return M
