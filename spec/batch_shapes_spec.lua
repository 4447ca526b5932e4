local hero = require "hero"
local helper = require "spec_helper"
local fx = helper.load_fixture("hero_smoke_batches.lua")
local cfg = fx.config

local load, batch = helper.smoke, helper.smoke_batch -- the batch's Lua fields are copies: the cases change them

local function pretrain_model()
  local m = hero.models.HeroForPretraining(cfg.model_config.pretrain, {
    vfeat_dim = cfg.constants.vfeat_dim, max_frm_seq_len = cfg.constants.max_frm_seq_len,
    vocab_pad = cfg.constants.vocab_pad_pretraining, lw_st_ed = 0.01, drop_svmr_prob = 0,
  })
  m:load_state_dict(load("weights"), {strict = false})
  return m:evaluate()
end

local function first_row(t) return t:narrow(1, 1, 1):contiguous() end
local function drop_last_column(t) return t:narrow(2, 1, t:size(2) - 1):contiguous() end
local function extra_column(t) return hero.cat({t, t:narrow(2, 1, 1)}, 2) end

describe("pre-training batches of a wrong shape or dtype", function()
  local m = pretrain_model()

  -- each of these gave a loss, a wrong one, before the batch was checked: the tensor broadcast,
  -- was read through a view, or was converted
  local cases = {
    {"fom", "c_attn_masks", first_row, "the fom batch's c_attn_masks is [1, 12], expected [B, Lc]: B (video rows) = 2"},
    {"fom", "shuffled_orders", first_row, "shuffled_orders is [1, 12], expected [B, Lc]"},
    {"mfm-nce", "c_v_feats", first_row,
     "c_attn_masks is [3, 12], expected [B, Lc]: B (video rows) = 1 from c_v_feats dim 1"},
    {"mfm-nce", "c_v_feats", function(t) return t:long() end, "c_v_feats is i64, expected a float dtype"},
    {"mffr", "f_v_feats", function(t) return t:long() end, "the mffr batch's f_v_feats is i64, expected a float dtype"},
    {"mffr", "feat_targets", function(t) return t:long() end, "feat_targets is i64"},
    {"mffr", "feat_targets", function(t) return t:unsqueeze(1) end, "feat_targets is [1, 6, 24], expected [n, D]"},
    {"mfm-nce", "feat_targets", function(t) return t:narrow(1, 2, t:size(1) - 1):contiguous() end,
     "the mfm-nce batch's feat_targets has 5 rows, its c_v_masks marks 6 frames"},
    {"mlm", "txt_mask_tgt", drop_last_column, "the mlm batch's txt_mask_tgt is [7, 15], expected [S, Lo]",
     "Lo (cross-modal positions) = 16 from gather_index dim 2"},
    {"mlm", "txt_mask_tgt", extra_column, "txt_mask_tgt is [7, 17]"},
    {"mlm", "txt_labels", function(t) return t:narrow(1, 1, t:size(1) - 1):contiguous() end,
     "txt_labels has 9 labels, its txt_mask_tgt marks 10 tokens"},
    {"vsm", "f_attn_masks", function(t) return t:unsqueeze(1) end, "f_attn_masks is [1, 11, 11], expected [S, Lo]"},
    {"vsm", "q_vidx", function(t) return t:unsqueeze(1) end, "q_vidx is [1, 15], expected [Nq]"},
    {"vsm", "targets", extra_column, "targets is [15, 3], expected [Nq, 2]"},
    {"vsm", "query_pos_ids", function(t) return t:expand(2, t:size(2)):contiguous() end,
     "query_pos_ids is [2, 12], expected [1 or Nq, Lq]: Nq (queries) = 15 from query_input_ids dim 1"},
    {"vsm", "f_v_feats", function(t) return t:narrow(3, 1, 20):contiguous() end,
     "f_v_feats is [11, 4, 20], expected [S, Lv, D]", "D (feature width) = 24 from the model's vfeat_dim"},
    {"vsm", "f_sub_input_ids", function(t) return t:float() end, "f_sub_input_ids is f32, expected an integer dtype"},
  }

  it("refuses a field of a wrong shape or dtype, naming it and the size it must have", function()
    for _, c in ipairs(cases) do
      local task, field, change = c[1], c[2], c[3]
      local b = batch("batch_" .. task)
      b[field] = change(b[field])
      local ok, err = pcall(m.forward, m, b, task)
      assert(not ok, string.format("%s with a changed %s gave a loss", task, field))
      for i = 4, #c do
        assert(tostring(err):find(c[i], 1, true),
          string.format("%s %s: %q does not mention %q", task, field, err, c[i]))
      end
      assert.is_truthy(tostring(err):find("HeroForPretraining", 1, true))
    end
  end)

  it("accepts what reads the same: a position row per sequence, bool and float masks", function()
    for _, task in ipairs {"mlm", "mfm-nce", "mffr", "fom", "vsm"} do
      local want = m:forward(batch("batch_" .. task), task).loss:item()
      local b = batch("batch_" .. task)
      for field, t in pairs(b) do
        if hero.is_tensor(t) then
          if (field:find("pos_ids$") or field == "position_ids") and t:size(1) == 1 then
            local rows = (b.f_sub_input_ids or b.input_ids or t):size(1)
            if field == "query_pos_ids" then rows = b.query_input_ids:size(1) end
            b[field] = t:expand(rows, t:size(2)):contiguous()
          elseif field:find("mask") and field ~= "f_v_masks" and field ~= "c_v_masks" then
            b[field] = field:find("attn") and t:float() or t:bool()
          end
        end
      end
      assert.equal(want, m:forward(b, task).loss:item(), task)
    end
  end)

  it("refuses num_subs and sub_idx2frame_idx that do not match the tensors", function()
    local function with(change, ...)
      local b = batch("batch_fom")
      change(b)
      helper.assert_error_contains(function() m:forward(b, "fom") end, ...)
    end
    with(function(b) b.num_subs[1] = b.num_subs[1] + 1 end, "num_subs add up to 8 subtitle rows, its tensors hold 7")
    with(function(b) b.num_subs[#b.num_subs + 1] = 0 end, "3 num_subs and 2 sub_idx2frame_idx entries for 2 video rows")
    with(function(b) b.num_subs[1] = 1.5 end, "num_subs[1] must be a count, got 1.5")
    -- a frame past the video's last one would land on the next video's first frames
    with(function(b) b.sub_idx2frame_idx[1][1][2][1] = 12 end, "sub_idx2frame_idx[1][1] frame 1 is 12, not in [0, 12)")
    with(function(b) b.sub_idx2frame_idx[1][1][2][1] = -1 end, "frame 1 is -1")
    with(function(b) b.sub_idx2frame_idx[1][1][1] = b.num_subs[1] end,
      "sub_idx2frame_idx[1][1] must be {subtitle in [0, ")
    with(function(b) b.sub_idx2frame_idx[2] = "x" end, "sub_idx2frame_idx[2] must be a list of {subtitle, frames}")
    with(function(b)
      local frames = {}
      for i = 1, 20 do frames[i] = 0 end
      b.sub_idx2frame_idx[1][1][2] = frames
    end, "lists 20 frames, a subtitle row has")
    -- forward_repr, the downstream models' path, checks the same
    local b = batch("batch_vsm")
    b.c_attn_masks = first_row(b.c_attn_masks)
    helper.assert_error_contains(function() m.v_encoder:forward_repr(b) end, "HierarchicalVlModel",
      "forward_repr: the batch's c_attn_masks is [1, 12], expected [B, Lc]")
  end)
end)

describe("fine-tuning batches of a wrong shape", function()
  local function model(cls, head)
    local m = cls(cfg.model_config.finetune, {vfeat_dim = cfg.constants.vfeat_dim,
      max_frm_seq_len = cfg.constants.max_frm_seq_len})
    m:load_checkpoint(load("weights"))
    if head then m:load_checkpoint(load(head .. "_head_init")) end
    return m:set_dropout(0)
  end

  it("refuses them in VCMR, VideoQA, VIOLIN and TVC", function()
    local vcmr = model(hero.models.HeroForVcmr)
    local b = batch("vcmr_batch")
    b.targets = extra_column(b.targets)
    helper.assert_error_contains(function() vcmr:forward(b, "tvr") end, "HeroForVcmr",
      "the batch's targets is [", ", 3], expected [Nq, 2]")
    b = batch("vcmr_batch")
    b.query_attn_masks = drop_last_column(b.query_attn_masks)
    helper.assert_error_contains(function() vcmr:forward(b, "tvr") end, "query_attn_masks is [", "expected [Nq, Lq]")
    helper.assert_error_contains(function()
      vcmr:encode_queries(b.query_input_ids, b.query_pos_ids, b.query_attn_masks)
    end, "encode_queries: the queries's query_attn_masks")

    local qa = model(hero.models.HeroForVideoQA, "videoqa")
    b = batch("videoqa_batch")
    b.qa_pos_ids = b.qa_pos_ids:expand(2, b.qa_pos_ids:size(2)):contiguous()
    helper.assert_error_contains(function() qa:forward(b, "tvqa") end, "qa_pos_ids is [2, ",
      "expected [1 or B, Lq]: B (video rows) = 10 from c_v_feats dim 1")

    local violin = model(hero.models.HeroForViolin, "violin")
    b = batch("violin_batch")
    b.targets = b.targets:reshape(-1)
    helper.assert_error_contains(function() violin:forward(b, "violin") end, "targets is [4], expected [B, 1]")

    local tvc = hero.models.HeroForTvc(cfg.model_config.tvc, {vfeat_dim = cfg.constants.vfeat_dim,
      max_frm_seq_len = cfg.constants.max_frm_seq_len})
    b = batch("tvc_batch")
    b.cap_tgt_ids = drop_last_column(b.cap_tgt_ids)
    helper.assert_error_contains(function() tvc:forward(b) end, "HeroForTvc", "cap_tgt_ids is [",
      "expected [Nc, Lt]")
    -- a negative start reads the previous video's frames through the flat rows
    b = batch("tvc_batch")
    b.clip_ranges[2][1] = {-2, 3}
    helper.assert_error_contains(function() tvc:forward(b) end, "clip_ranges[2][1] must be {st, ed}",
      "st >= 0, got {-2, 3}")
  end)
end)
