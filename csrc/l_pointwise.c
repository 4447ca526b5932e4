/* l_pointwise.c — Lua bindings of the pointwise ops. */
#include "l_common.h"

void hr_lua_open_pointwise(lua_State *L, int module_idx, int methods_idx)
{
    (void)L;
    (void)module_idx;
    (void)methods_idx;
}
