#include "core.h"
void ms_fastpath_open(lua_State *L) { (void)L; }
