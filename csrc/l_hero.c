/* l_hero.c — luaopen_hero_core: builds the hero.core table and the hero.Tensor metatable. */
#include <dlfcn.h>

#include "l_common.h"

#ifdef HERO_WITH_CUDA
#define HERO_HAS_CUDA 1
#else
#define HERO_HAS_CUDA 0
#endif

/* Keeps this module loaded until the process ends, whatever lua_close does with the C modules it
 * loaded: the compute pool's threads (and worker pools of other Lua states) run its code until
 * then, and its static memory (the block cache) must stay valid for them. */
static void pin_module(void)
{
    Dl_info info;
    if (dladdr((void *)&pin_module, &info) && info.dli_fname) {
        void *self = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
        (void)self; /* the extra reference is never closed, on purpose */
    }
}

int luaopen_hero_core(lua_State *L)
{
    pin_module();
    lua_newtable(L); /* hero.core */
    int module_idx = lua_gettop(L);
    luaL_newmetatable(L, HR_TENSOR_MT);
    lua_pop(L, 1);
    lua_newtable(L); /* tensor methods, shared with Lua code through core.Tensor */
    int methods_idx = lua_gettop(L);

    hr_lua_open_tensor(L, module_idx, methods_idx);
    hr_lua_open_pointwise(L, module_idx, methods_idx);
    hr_lua_open_reduce(L, module_idx, methods_idx);
    hr_lua_open_search(L, module_idx, methods_idx);
    hr_lua_open_linalg(L, module_idx, methods_idx);
    hr_lua_open_index(L, module_idx, methods_idx);
    hr_lua_open_random(L, module_idx, methods_idx);
    hr_lua_open_io(L, module_idx, methods_idx);
    hr_lua_open_autograd(L, module_idx, methods_idx);
    hr_lua_open_optim(L, module_idx, methods_idx);
    hr_lua_open_nn(L, module_idx, methods_idx);
    hr_lua_open_function(L, module_idx, methods_idx);
    hr_lua_open_data(L, module_idx, methods_idx);
    hr_lua_open_datawrite(L, module_idx, methods_idx);
    hr_lua_open_text(L, module_idx, methods_idx);
    hr_lua_open_torchpt(L, module_idx, methods_idx);
    hr_lua_open_dist(L, module_idx, methods_idx);
    hr_lua_open_cuda(L, module_idx, methods_idx);
    hr_lua_open_autocast(L, module_idx, methods_idx);
    hr_lua_open_workers(L, module_idx, methods_idx);
    hr_lua_open_proc(L, module_idx, methods_idx);

    lua_pushvalue(L, methods_idx);
    lua_setfield(L, module_idx, "Tensor");
    luaL_getmetatable(L, HR_TENSOR_MT);
    lua_setfield(L, module_idx, "metatable");
    lua_pushboolean(L, HERO_HAS_CUDA);
    lua_setfield(L, module_idx, "cuda_compiled");
    lua_settop(L, module_idx);
    return 1;
}
