package aggregate

// RankSQL is lb's query ranking a player below the cached list, for tests
// that check its plan.
func RankSQL(lb *Leaderboard) string { return lb.rankSQL }
