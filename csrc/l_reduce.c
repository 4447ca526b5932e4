/* l_reduce.c — Lua bindings of the reduce ops. */
#include "l_common.h"

void hr_lua_open_reduce(lua_State *L, int module_idx, int methods_idx)
{
    (void)L;
    (void)module_idx;
    (void)methods_idx;
}
