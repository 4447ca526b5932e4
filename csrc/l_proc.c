/*
 * l_proc.c — a minimal process binding for tests that start, kill and reap child processes
 * (the crash-consistency spec kills training runs with SIGKILL at chosen moments). Lua's own
 * os.execute/io.popen wait for the child, so they cannot interrupt one.
 *
 *   local pid = hero.core._spawn({"lua5.4", "examples/pretrain.lua", ...}, {stdout = "/dev/null",
 *                                 stderr = "/tmp/err.txt"})   -- argv[1] is looked up in PATH
 *   hero.core._sleep(0.25)
 *   hero.core._kill(pid, "KILL")                               -- or a signal number; "TERM", "INT"
 *   local how, code = hero.core._wait(pid)                     -- "exited", status | "signaled", signo
 *   hero.core._wait(pid, true)                                 -- nil while it still runs
 *   hero.core._getpid(); hero.core._alive(pid)                 -- does a process of that id exist?
 *
 * The child inherits the environment and the working directory. Only direct children can be
 * waited for; every spawned child should be waited for once (otherwise it stays a zombie until
 * this process exits).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "l_common.h"

extern char **environ;

/* Raises unless opts[field] is nil or a path (checked before the file actions exist, which an
 * error would leak). */
static void check_redirect(lua_State *L, int opts_idx, const char *field)
{
    int t = lua_getfield(L, opts_idx, field);
    if (t == LUA_TSTRING) hr_lua_check_path(L, lua_gettop(L), "_spawn");
    else if (t != LUA_TNIL) luaL_error(L, "_spawn: opts.%s must be a file path", field);
    lua_pop(L, 1);
}

/* Redirects fd to path (opened for writing, created, truncated unless `append`). */
static int add_redirect(lua_State *L, posix_spawn_file_actions_t *fa, int opts_idx, const char *field, int fd)
{
    int rc = 0;
    if (lua_getfield(L, opts_idx, field) == LUA_TSTRING) {
        lua_getfield(L, opts_idx, "append");
        int append = lua_toboolean(L, -1);
        lua_pop(L, 1);
        int flags = O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC);
        rc = posix_spawn_file_actions_addopen(fa, fd, lua_tostring(L, -1), flags, 0666);
    }
    lua_pop(L, 1);
    return rc;
}

/* _spawn(argv, opts) -> pid. opts: stdout, stderr (file paths; default: inherited), append. */
static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int opts_idx = lua_istable(L, 2) ? 2 : 0;
    lua_Integer n = luaL_len(L, 1);
    if (n < 1) return luaL_error(L, "_spawn: argv must hold at least the program name");
    if (n > 4096) return luaL_error(L, "_spawn: argv has %d entries (at most 4096)", (int)n);
    /* each string stays on the stack (so it stays alive) until posix_spawnp returns */
    luaL_checkstack(L, (int)n + 8, "_spawn: argv too long");
    const char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(n + 1), 0);
    for (lua_Integer i = 1; i <= n; i++) {
        int t = lua_geti(L, 1, i);
        if (t != LUA_TSTRING && t != LUA_TNUMBER) return luaL_error(L, "_spawn: argv[%d] must be a string", (int)i);
        size_t len;
        argv[i - 1] = lua_tolstring(L, -1, &len);
        /* the program would see the argument cut at the NUL */
        if (strlen(argv[i - 1]) != len) return luaL_error(L, "_spawn: argv[%d] holds a NUL byte", (int)i);
    }
    argv[n] = NULL;
    if (opts_idx) {
        check_redirect(L, opts_idx, "stdout");
        check_redirect(L, opts_idx, "stderr");
    }
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa) != 0) return luaL_error(L, "_spawn: out of memory");
    int rc = 0;
    if (opts_idx) {
        rc = add_redirect(L, &fa, opts_idx, "stdout", 1);
        if (!rc) rc = add_redirect(L, &fa, opts_idx, "stderr", 2);
    }
    pid_t pid = -1;
    if (!rc) rc = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return luaL_error(L, "_spawn: cannot start '%s': %s", argv[0], strerror(rc));
    lua_pushinteger(L, (lua_Integer)pid);
    return 1;
}

static int signal_arg(lua_State *L, int idx)
{
    if (lua_isinteger(L, idx)) return (int)lua_tointeger(L, idx);
    const char *name = luaL_optstring(L, idx, "TERM");
    static const struct {
        const char *name;
        int sig;
    } names[] = {{"KILL", SIGKILL}, {"TERM", SIGTERM}, {"INT", SIGINT}, {"STOP", SIGSTOP}, {"CONT", SIGCONT},
                 {"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"0", 0}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].name) == 0) return names[i].sig;
    return luaL_error(L, "_kill: unknown signal '%s' (KILL, TERM, INT, STOP, CONT, HUP, USR1, USR2 or a number)",
                      name);
}

/* _kill(pid, signal = "TERM") -> true, or nil and a message (e.g. the process is gone). */
static int l_kill(lua_State *L)
{
    lua_Integer pid = luaL_checkinteger(L, 1);
    if (pid <= 0) return luaL_error(L, "_kill: pid must be positive, got %d", (int)pid);
    int sig = signal_arg(L, 2);
    if (kill((pid_t)pid, sig) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "kill(%d): %s", (int)pid, strerror(errno));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* _wait(pid, nohang) -> "exited", status | "signaled", signal | nil (nohang and still running). */
static int l_wait(lua_State *L)
{
    lua_Integer pid = luaL_checkinteger(L, 1);
    int nohang = lua_toboolean(L, 2);
    int status = 0;
    pid_t r;
    do {
        r = waitpid((pid_t)pid, &status, nohang ? WNOHANG : 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return luaL_error(L, "_wait(%d): %s", (int)pid, strerror(errno));
    if (r == 0) return 0;
    if (WIFEXITED(status)) {
        lua_pushliteral(L, "exited");
        lua_pushinteger(L, WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        lua_pushliteral(L, "signaled");
        lua_pushinteger(L, WTERMSIG(status));
    } else {
        lua_pushliteral(L, "other");
        lua_pushinteger(L, status);
    }
    return 2;
}

/* _alive(pid) -> whether a process with that id exists (on this machine), zombies included. */
static int l_alive(lua_State *L)
{
    lua_Integer pid = luaL_checkinteger(L, 1);
    if (pid <= 0) return luaL_error(L, "_alive: pid must be positive, got %d", (int)pid);
    lua_pushboolean(L, kill((pid_t)pid, 0) == 0 || errno == EPERM);
    return 1;
}

static int l_getpid(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

/* _sleep(seconds): sleeps the calling thread (fractions allowed). */
static int l_sleep(lua_State *L)
{
    lua_Number s = luaL_checknumber(L, 1);
    if (!(s >= 0) || s > 1e6) return luaL_error(L, "_sleep: seconds must be in [0, 1e6]");
    struct timespec ts = {(time_t)s, (long)((s - (lua_Number)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return 0;
}

void hr_lua_open_proc(lua_State *L, int module_idx, int methods_idx)
{
    (void)methods_idx;
    static const luaL_Reg fns[] = {
        {"_spawn", l_spawn}, {"_kill", l_kill}, {"_wait", l_wait}, {"_getpid", l_getpid}, {"_alive", l_alive}, {"_sleep", l_sleep},
        {NULL, NULL},
    };
    lua_pushvalue(L, module_idx);
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}
