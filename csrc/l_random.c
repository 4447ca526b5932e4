/* l_random.c — Lua bindings of the random ops. */
#include "l_common.h"

void hr_lua_open_random(lua_State *L, int module_idx, int methods_idx)
{
    (void)L;
    (void)module_idx;
    (void)methods_idx;
}
