--- hero.tensorboard: TensorBoard event files written by hero (no TensorFlow needed).
--
-- An event file is a sequence of TFRecords: uint64 length, masked CRC-32C of the length, the bytes
-- of one serialised `Event` protocol buffer, masked CRC-32C of those bytes. The first event holds
-- file_version "brain.Event:2"; scalars are Event{wall_time, step, summary{value{tag, simple_value}}}.
--   local tb = hero.tensorboard.Writer("runs/x")   -- runs/x/events.out.tfevents.<time>.<host>.<pid>
--   tb:add_scalar("loss/mlm", 2.31, step); tb:flush(); tb:close()
--
-- Crashes: records are only ever appended, so a writer killed midway leaves at most one torn record
-- at the end of its file; the readers here ignore it (TensorBoard does too). A Writer never appends
-- to an existing file: each one starts a new file whose name sorts after the directory's existing
-- event files (TensorBoard reads a directory's files in name order). A run resumed from a checkpoint
-- of step N calls :add_session_start(N + 1): TensorBoard then drops the points of steps > N that the
-- killed run logged after its checkpoint (they are logged again), and so does tensorboard.read_run.
local tensorboard = {}

-- ------------------------------------------------------------------ CRC-32C (Castagnoli)

local CRC_TABLE = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if c & 1 == 1 then c = (c >> 1) ~ 0x82F63B78 else c = c >> 1 end
  end
  CRC_TABLE[i] = c
end

--- CRC-32C of a string (reflected, initial and final xor 0xFFFFFFFF).
function tensorboard.crc32c(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = CRC_TABLE[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8)
  end
  return c ~ 0xFFFFFFFF
end

--- TFRecord's masked CRC: rotate right by 15 bits and add 0xa282ead8 (mod 2^32).
function tensorboard.masked_crc(s)
  local c = tensorboard.crc32c(s)
  return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
end

--- One TFRecord around `data`.
function tensorboard.record(data)
  local len = string.pack("<I8", #data)
  return len .. string.pack("<I4", tensorboard.masked_crc(len)) .. data ..
    string.pack("<I4", tensorboard.masked_crc(data))
end

-- ------------------------------------------------------------------ protocol buffer encoding

local function varint(n)
  local out = {}
  repeat
    local b = n & 0x7F
    n = n >> 7 -- logical shift: negative int64 values take 10 bytes, as protobuf encodes them
    if n ~= 0 then b = b | 0x80 end
    out[#out + 1] = string.char(b)
  until n == 0
  return table.concat(out)
end

local function key(field, wire) return varint((field << 3) | wire) end
local function bytes_field(field, s) return key(field, 2) .. varint(#s) .. s end

--- Event{wall_time = 1 (double), step = 2 (int64), file_version = 3 (string) | summary = 5 (Summary) |
-- session_log = 7 (SessionLog)}
local function event(wall_time, step, body_field, body)
  local s = key(1, 1) .. string.pack("<d", wall_time)
  if step then s = s .. key(2, 0) .. varint(step) end
  return s .. bytes_field(body_field, body)
end

--- Summary{value = 1 (repeated Value{tag = 1 (string), simple_value = 2 (float)})}
local function scalar_summary(tag, value)
  local v = bytes_field(1, tag) .. key(2, 5) .. string.pack("<f", value)
  return bytes_field(1, v)
end

-- ------------------------------------------------------------------ writer

local Writer = {}
Writer.__index = Writer

-- Seconds since the epoch; sub-second precision from the monotonic clock's fraction (TensorBoard
-- only orders and displays these).
local function wall_time()
  local ok, core = pcall(require, "hero.core")
  if ok and core._now then return os.time() + (core._now() % 1) end
  return os.time()
end

-- The number in an event file's name: its creation time (seconds), or nil when it is not one a
-- clock gives (beyond 2^53 a time would not count up: the next name must still sort after it).
local function name_time(name)
  local t = math.tointeger(tonumber(name:match("^events%.out%.tfevents%.(%d+)")))
  return t and t < (1 << 53) and t or nil
end

--- Creates dir (if needed) and a new event file in it. opts.filename overrides the file name.
-- The name's time is at least one second after the newest event file already in dir, so a run
-- restarted within the same second still sorts after the one it continues.
function tensorboard.Writer(dir, opts)
  if type(dir) ~= "string" or dir == "" then
    error("tensorboard.Writer: expected a directory path, got " .. (dir == "" and "an empty string" or type(dir)), 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then
    error("tensorboard.Writer: options must be a table ({filename =}), got " .. type(opts), 2)
  end
  for k in pairs(opts) do
    if k ~= "filename" then
      error(string.format("tensorboard.Writer: unknown option '%s' (filename)", tostring(k)), 2)
    end
  end
  if opts.filename ~= nil and (type(opts.filename) ~= "string" or opts.filename == "" or opts.filename:find("/")) then
    error("tensorboard.Writer: option filename must be a file name (no '/'), got " .. tostring(opts.filename), 2)
  end
  local okc, core = pcall(require, "hero.core")
  if okc and core.fs_mkdir then -- without a shell, and a failure is this error rather than mkdir's stderr
    local made, err = pcall(require("hero.data.prepro").mkdir_p, dir)
    if not made then error("tensorboard.Writer: " .. tostring(err):gsub("^[^\n]-%.lua:%d+: ", ""), 2) end
  else
    os.execute("mkdir -p -- '" .. dir:gsub("'", "'\\''") .. "'")
  end
  local name = opts.filename
  if not name then
    local host = (io.popen("hostname 2>/dev/null"):read("l") or "hero"):gsub("[^%w%-%.]", "_")
    local t = os.time()
    if okc and core.fs_listdir then
      local ok, names = pcall(core.fs_listdir, dir)
      if ok then
        for _, n in ipairs(names) do
          local nt = name_time(n)
          if nt and nt >= t then t = nt + 1 end
        end
      end
    end
    local pid = okc and core._getpid and core._getpid() or 0
    name = string.format("events.out.tfevents.%d.%s.%d", t, host, pid)
  end
  local path = dir .. "/" .. name
  -- a Writer never appends to, nor truncates, an event file
  local probe = io.open(path, "rb")
  if probe then
    probe:close()
    error("tensorboard.Writer: " .. path .. " already exists", 2)
  end
  local f, err = io.open(path, "wb")
  if not f then error("tensorboard.Writer: cannot create " .. path .. ": " .. tostring(err), 2) end
  local self = setmetatable({path = path, file = f}, Writer)
  self:_write(tensorboard.record(event(wall_time(), nil, 3, "brain.Event:2")))
  self:flush()
  return self
end

-- Every write and flush is checked: a full disk must stop the run rather than leave points out, or
-- a torn record in the middle of the file, where readers stop. After a failure the writer refuses
-- to go on, so the torn record stays the file's last one (which readers skip).
local function usable(self, level)
  if not self.file then error("tensorboard.Writer: the writer is closed", level + 1) end
  if self.failed then
    error(string.format("tensorboard.Writer: an earlier write to %s failed (%s)", self.path, self.failed), level + 1)
  end
end

local function check_io(self, ok, err, what)
  if ok then return end
  self.failed = tostring(err)
  error(string.format("tensorboard.Writer: %s %s failed: %s", what, self.path, tostring(err)), 3)
end

function Writer:__tostring()
  return string.format("hero.tensorboard.Writer(%s%s)", tostring(self.path),
    not self.file and ", closed" or self.failed and ", failed" or "")
end

function Writer:_write(bytes)
  usable(self, 2)
  local ok, err = self.file:write(bytes)
  check_io(self, ok, err, "writing")
end

--- Writes SessionLog{status = START} at `step`: readers drop every point of an earlier file (or
-- earlier in this one) whose step is >= step. A run resumed from the checkpoint of step N writes
-- it with step N + 1 before its first point.
function Writer:add_session_start(step)
  usable(self, 1)
  if math.type(step) ~= "integer" then error("tensorboard.Writer:add_session_start(step): expected an integer", 2) end
  -- Event.session_log = 7: SessionLog{status = 1 (enum; START = 1)}
  self:_write(tensorboard.record(event(wall_time(), step, 7, key(1, 0) .. varint(1))))
end

--- The file's bytes reach the disk (fsync); called before a checkpoint that covers them is published.
function Writer:sync()
  if not self.file then return end
  self:flush()
  local okc, core = pcall(require, "hero.core")
  if okc and core.fs_sync then core.fs_sync(self.path) end
end

--- Appends a scalar point.
function Writer:add_scalar(tag, value, step)
  usable(self, 1)
  if type(tag) ~= "string" or type(value) ~= "number" or math.type(step) ~= "integer" then
    error("tensorboard.Writer:add_scalar(tag, value, step): expected a string, a number and an integer", 2)
  end
  self:_write(tensorboard.record(event(wall_time(), step, 5, scalar_summary(tag, value))))
end

function Writer:flush()
  if not self.file then return end
  usable(self, 1)
  local ok, err = self.file:flush()
  check_io(self, ok, err, "flushing")
end

--- Flushes and closes the event file; a failed flush or close (a full disk, a file size limit) is
-- an error naming the file, as a failed write is. Closing twice is fine.
function Writer:close()
  local f = self.file
  if not f then return end
  self.file = nil
  local fok, ferr = f:flush()
  local cok, cerr = f:close()
  if not fok then check_io(self, fok, ferr, "flushing") end
  check_io(self, cok, cerr, "closing")
end

Writer.__close = Writer.close
-- the collector cannot report an error: it only releases the file (close() reports)
function Writer:__gc()
  if self.file then
    pcall(self.file.close, self.file)
    self.file = nil
  end
end

-- Decodes an event file: an array of {step, tag, value, wall_time} scalars and
-- {start = true, step} session starts, in file order. A torn last record (the file ends inside it,
-- as a writer killed midway leaves it) is ignored: the second result is then its byte offset.
-- A bad CRC anywhere else is an error.
local function read_events(path)
  local f, ferr = io.open(path, "rb")
  if not f then error("tensorboard: cannot open " .. tostring(ferr), 0) end
  local data = f:read("a")
  f:close()
  local out, pos = {}, 1
  local function read_varint(s, p)
    local n, shift = 0, 0
    repeat
      local b = s:byte(p)
      if not b then error("tensorboard: truncated varint") end
      n = n | ((b & 0x7F) << shift)
      shift = shift + 7
      p = p + 1
    until b < 0x80
    return n, p
  end
  while pos <= #data do
    if pos + 11 > #data then return out, pos - 1 end -- torn inside the header
    local len = string.unpack("<I8", data, pos)
    local lcrc = string.unpack("<I4", data, pos + 8)
    if lcrc ~= tensorboard.masked_crc(data:sub(pos, pos + 7)) then
      error(string.format("tensorboard: bad length CRC at byte %d of %s", pos, path))
    end
    if pos + 15 + len > #data then return out, pos - 1 end -- torn inside the body
    local body = data:sub(pos + 12, pos + 11 + len)
    local dcrc = string.unpack("<I4", data, pos + 12 + len)
    if dcrc ~= tensorboard.masked_crc(body) then
      error(string.format("tensorboard: bad data CRC at byte %d of %s", pos, path))
    end
    pos = pos + 16 + len
    -- decode the fields we write
    local p, ev = 1, {}
    while p <= #body do
      local k
      k, p = read_varint(body, p)
      local field, wire = k >> 3, k & 7
      if wire == 0 then
        ev[field], p = read_varint(body, p)
      elseif wire == 1 then
        ev[field] = string.unpack("<d", body, p)
        p = p + 8
      elseif wire == 2 then
        local n
        n, p = read_varint(body, p)
        ev[field] = body:sub(p, p + n - 1)
        p = p + n
      else
        error("tensorboard: unexpected wire type " .. wire)
      end
    end
    if ev[7] then -- Event.session_log
      local st = ev[7]:byte(1) == 0x08 and read_varint(ev[7], 2) or 0
      if st == 1 then out[#out + 1] = {start = true, step = ev[2] or 0, wall_time = ev[1]} end
    end
    if ev[5] then
      local s = ev[5]
      local q = 1
      while q <= #s do
        local k
        k, q = read_varint(s, q)
        local n
        n, q = read_varint(s, q)
        local v = s:sub(q, q + n - 1)
        q = q + n
        if k >> 3 == 1 then
          local r, tag, value = 1, nil, nil
          while r <= #v do
            local kk
            kk, r = read_varint(v, r)
            if kk >> 3 == 1 then
              local m
              m, r = read_varint(v, r)
              tag = v:sub(r, r + m - 1)
              r = r + m
            elseif kk >> 3 == 2 then
              value = string.unpack("<f", v, r)
              r = r + 4
            else
              error("tensorboard: unexpected field in Summary.Value")
            end
          end
          out[#out + 1] = {step = ev[2] or 0, tag = tag, value = value, wall_time = ev[1]}
        end
      end
    end
  end
  return out, nil
end

--- Reads back the scalars of an event file: an array of {step, tag, value, wall_time} (for checks).
-- A torn last record is ignored; the second result is then the byte offset where it starts.
function tensorboard.read_scalars(path)
  local events, torn = read_events(path)
  local out = {}
  for _, e in ipairs(events) do
    if not e.start then out[#out + 1] = e end
  end
  return out, torn
end

--- The scalars of a whole run directory as TensorBoard shows them: its event files in name order,
-- each session start dropping the points read so far whose step is >= its step (the points a
-- killed run logged after the checkpoint it was resumed from). Returns the array of
-- {step, tag, value, wall_time} and the number of torn records ignored.
function tensorboard.read_run(dir)
  local core = require "hero.core"
  local names = core.fs_listdir(dir)
  local out, torn = {}, 0
  for _, name in ipairs(names) do
    if name:match("tfevents") then
      local events, t = read_events(dir .. "/" .. name)
      if t then torn = torn + 1 end
      for _, e in ipairs(events) do
        if e.start then
          local keep = {}
          for _, o in ipairs(out) do
            if o.step < e.step then keep[#keep + 1] = o end
          end
          out = keep
        else
          out[#out + 1] = e
        end
      end
    end
  end
  return out, torn
end

return tensorboard
