package aggregate

// RankSQL is lb's query ranking a player below the cached list, for tests
// that check its plan.
func RankSQL(lb *Leaderboard) string { return lb.rankSQL }

// TopSQL is lb's query reading a board's first entries (a list rebuild, a
// RankTTL snapshot).
func TopSQL(lb *Leaderboard) string { return lb.topSQL }
