/* l_linalg.c — Lua bindings of the linalg ops. */
#include "l_common.h"

void hr_lua_open_linalg(lua_State *L, int module_idx, int methods_idx)
{
    (void)L;
    (void)module_idx;
    (void)methods_idx;
}
